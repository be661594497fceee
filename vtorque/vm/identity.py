"""Who a job's QEMU runs as, and what that identity must be able to open.

Each job's QEMU runs under the job owner's uid and primary gid: libvirt's per-domain
static DAC label `+uid:+gid` with relabel="no" (pcocc runs QEMU as the user as well).
libvirt starts QEMU through its command runner, which gives the process the label user's
own supplementary groups (getgrouplist of the owner's name and the label's gid), so QEMU
holds exactly the owner's credentials: what the guests reach through their 9p shares is
what the owner may reach on the node, and one job's QEMU cannot open another owner's
disks, seeds or keys (all owned by their own job's identity, mode 0600/0400). Without an
owner (`vtorque vm up` by an admin) QEMU runs as qemu_user/qemu_group, as before.

What that identity needs on the node, checked here before any guest starts, as the
identity itself (a child process with its uid, gid and groups, through proc.run):

- libvirt's per-domain directory: libvirt makes /var/lib/libvirt/qemu/domain-N-NAME
  0750 owned by the label, but its parent is 0750 libvirt-qemu: it must be traversable by
  others (0751), or QEMU cannot read its own master key and exits at once;
- the image's files (base disk, kernel, initrd): readable by others, as the catalog's
  pool keeps them (0644 in 0755 directories);
- under KVM, /dev/kvm: libvirt copies it into QEMU's private /dev with the host's owner
  and mode, so it must be usable by the owner: mode 0666 (systemd's upstream default) or
  a group the owners are in;
- the shares: the job's working directory (the owner's fault when not readable), the
  owner's home and the site's shares (left out when not readable).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from vtorque import proc
from vtorque.config import Config
from vtorque.errors import NodeError, Unsupported
from vtorque.images import Image
from vtorque.vm.shares import SITE, WORKDIR, ShareSpec, collapse, without

LIBVIRT_QEMU_DIR = "/var/lib/libvirt/qemu"
KVM_DEVICE = "/dev/kvm"
SETPRIV = "/usr/bin/setpriv"
CHECK_TIMEOUT = 30.0
# Kinds of access checked: a readable file, a readable and traversable directory, a
# traversable directory.
READ, LIST, ENTER = "r", "d", "x"
# One shell for every path (given as arguments, never as code): prints the index of each
# path the identity cannot use as asked.
_CHECK = ('i=0; while [ $# -gt 1 ]; do k=$1; p=$2; shift 2; ok=1; case $k in '
          'r) [ -f "$p" ] && [ -r "$p" ] || ok= ;; '
          'd) [ -d "$p" ] && [ -r "$p" ] && [ -x "$p" ] || ok= ;; '
          'x) [ -d "$p" ] && [ -x "$p" ] || ok= ;; esac; '
          '[ -n "$ok" ] || echo "$i"; i=$((i + 1)); done')


@dataclass(frozen=True)
class Identity:
    """The uid, gid and login name QEMU runs as (name: for its supplementary groups)."""
    uid: int
    gid: int
    name: str
    owner: bool             # the job owner's identity (False: qemu_user/qemu_group)

    @property
    def label(self) -> str:
        """libvirt's DAC label."""
        return f"+{self.uid}:+{self.gid}"


def of_owner(user: str) -> Identity:
    """The job owner's identity: uid and primary gid as this node knows them."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise NodeError(f"the job's owner {user!r} has no account on this node") from None
    if entry.pw_uid == 0:
        raise NodeError("a VM job's owner must not be root: its QEMU would run as root")
    return Identity(entry.pw_uid, entry.pw_gid, entry.pw_name, True)


def of_config(config: Config) -> Identity:
    """QEMU's identity without a job owner (config keys qemu_user, qemu_group)."""
    try:
        uid = pwd.getpwnam(config.qemu_user).pw_uid
        gid = grp.getgrnam(config.qemu_group).gr_gid
    except KeyError:
        raise NodeError(f"QEMU user {config.qemu_user!r} or group {config.qemu_group!r} does "
                        "not exist on this node (config keys qemu_user, qemu_group)") from None
    return Identity(uid, gid, config.qemu_user, False)


def groups(identity: Identity) -> list[int]:
    """The groups QEMU holds: the label's gid and the name's supplementary groups."""
    try:
        return sorted(set(os.getgrouplist(identity.name, identity.gid)))
    except OSError:
        return [identity.gid]


def kvm_problem(identity: Identity, device: str = KVM_DEVICE) -> str | None:
    """Why QEMU under `identity` cannot open /dev/kvm for reading and writing, or None."""
    try:
        st = os.stat(device)
    except OSError as exc:
        return f"{device}: {exc.strerror}"
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == identity.uid and mode & 0o600 == 0o600:
        return None
    if st.st_gid in groups(identity) and mode & 0o060 == 0o060:
        return None
    if mode & 0o006 == 0o006:
        return None
    return (f"{device} (mode {mode:04o}, group {st.st_gid}) is not usable by uid "
            f"{identity.uid}, which the job's QEMU runs as: make it 0666 (a udev rule "
            'KERNEL=="kvm", MODE="0666") or use hypervisor: qemu')


def unusable(identity: Identity, paths: Sequence[tuple[str, str]]) -> list[int]:
    """Indices of the (kind, path) pairs the identity cannot use as asked (READ, LIST,
    ENTER), tried as that identity. NodeError when the check itself cannot run."""
    if not paths:
        return []
    argv = [SETPRIV, f"--reuid={identity.uid}", f"--regid={identity.gid}", "--init-groups",
            "--", "/bin/sh", "-c", _CHECK, "sh"]
    for kind, path in paths:
        argv += [kind, path]
    done = proc.run(argv, timeout=CHECK_TIMEOUT, check=False, env=proc.clean_env(), cwd="/")
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise NodeError(f"cannot check what uid {identity.uid} may open: {detail[:200]}")
    out = []
    for word in done.stdout.split():
        if word.isdigit() and int(word) < len(paths):
            out.append(int(word))
    return out


def usable_shares(qemu: Identity, shares: tuple[ShareSpec, ...], image: Image,
                  config: Config) -> tuple[ShareSpec, ...]:
    """The shares QEMU under `qemu` can serve, after checking, as that identity, that it
    can reach what every guest needs (libvirt's domain directory, the image's files, the
    state directories). A working directory it cannot read is the owner's fault; a home
    or site share it cannot read is left out; a site share that is not a directory here,
    like everything else it cannot reach, is this node's fault."""
    wanted = [(ENTER, LIBVIRT_QEMU_DIR)]
    wanted += [(READ, f.path) for _role, f in image.files()]
    for directory in (config.state_dir, config.ramdisk_dir):
        if os.path.isdir(directory):
            wanted.append((ENTER, directory))
    first_share = len(wanted)
    wanted += [(LIST, s.source) for s in shares]
    bad = unusable(qemu, wanted)
    dropped: set[str] = set()
    for index in bad:
        kind, path = wanted[index]
        if index < first_share:
            hint = (" (libvirt makes it 0750: chmod o+x it, see docs/guest-images.md)"
                    if path == LIBVIRT_QEMU_DIR else "")
            raise NodeError(f"QEMU under uid {qemu.uid} ({qemu.name}) cannot "
                            f"{'read' if kind == READ else 'enter'} {path}{hint}")
        share = shares[index - first_share]
        if share.origin == WORKDIR:
            raise Unsupported(f"the job's working directory {share.source[:200]!r} is not "
                              f"readable by {qemu.name} on this node: its guests cannot "
                              "share it")
        if share.origin == SITE and not os.path.isdir(share.source):
            raise NodeError(f"the share {share.source} (config key batch.shares) is not a "
                            "directory on this node")
        dropped.add(share.source)          # a home or site share the owner may not read
    return collapse(without(shares, dropped))
