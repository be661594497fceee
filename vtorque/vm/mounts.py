"""What a Linux guest mounts: the job's shares (9p, at their node paths) and rank 0's data
disk at /data. Pure text for the seed: a cloud-init bootcmd step, the lines of the
guest's readiness check, and the plain `vtorque-mounts` file the test guest's /init reads.

The mounts happen in cloud-init's first stage (bootcmd), before the owner's account is
made: a shared home is then already there when the account is created (useradd keeps an
existing home and copies no skeleton into it), and nothing is written into it as root.
A mount that fails is reported by the readiness check (`vtorque-error share ...`), with
mount's own message from MOUNT_LOG.
"""

from __future__ import annotations

import shlex

from vtorque.vm.spec import DATA_MOUNT, DATA_SERIAL, GuestSpec

MOUNT_LOG = "/run/vtorque-mounts.log"
# 9p as the Linux client speaks it best: 9P2000.L, large messages, the page cache only
# for mmap (a working directory is shared with the node and with the other guests, so
# reads and writes go to the node), never a setuid or device file from the node.
NINEP_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144,cache=mmap,nosuid,nodev"
DATA_OPTIONS = "nosuid,nodev"
TEST_GUEST_FILE = "vtorque-mounts"


def share_options(readonly: bool) -> str:
    return NINEP_OPTIONS + (",ro" if readonly else "")


def _find_data_disk() -> str:
    """Shell: $dev is the virtio disk whose serial is DATA_SERIAL (empty if none)."""
    return ("dev=; for b in /sys/block/vd*; do "
            f"[ \"$(cat \"$b/serial\" 2>/dev/null)\" = {DATA_SERIAL} ] && dev=/dev/${{b##*/}}; "
            "done\n")


def mount_script(spec: GuestSpec) -> str | None:
    """The bootcmd shell that mounts the guest's shares and data disk (None: nothing)."""
    q = shlex.quote
    if not spec.shares and spec.scratch is None:
        return None
    s = f"exec >>{MOUNT_LOG} 2>&1\n"
    if spec.shares:
        s += "modprobe -q 9pnet_virtio; modprobe -q 9p\n"
    for share in spec.shares:
        target = q(share.target)
        s += (f"m=$(mkdir -p {target} 2>&1 && mount -t 9p -o {share_options(share.readonly)} "
              f"{share.tag} {target} 2>&1) || echo {q(share.target + ':')} \"$m\"\n")
    if spec.scratch is not None:
        s += _find_data_disk()
        s += (f"if [ -z \"$dev\" ]; then echo 'no disk with serial {DATA_SERIAL}'; "
              f"else m=$(mkdir -p {DATA_MOUNT} 2>&1 && mount -t ext4 -o {DATA_OPTIONS} "
              f"\"$dev\" {DATA_MOUNT} 2>&1) || echo \"$dev:\" \"$m\"; fi\n")
    return s


def check_lines(spec: GuestSpec) -> str:
    """Lines of the guest's readiness check (seed.check_script) that fail unless every
    mount is in place: `fail MESSAGE` is the check's reporting function."""
    q = shlex.quote
    why = f"\"$(tail -n 1 {MOUNT_LOG} 2>/dev/null)\""
    s = ""
    for share in spec.shares:
        s += (f"mountpoint -q {q(share.target)} || "
              f"fail {q('share: ' + share.target + ' is not mounted:')} {why}\n")
    if spec.scratch is not None:
        s += (f"mountpoint -q {DATA_MOUNT} || "
              f"fail 'data disk: {DATA_MOUNT} is not mounted:' {why}\n")
        if spec.owner_uid is not None:
            s += (f"[ \"$(stat -c %u {DATA_MOUNT})\" = {spec.owner_uid} ] || "
                  f"fail 'data disk: {DATA_MOUNT} is not owned by uid {spec.owner_uid}'\n")
    return s


def test_guest_file(spec: GuestSpec) -> str:
    """The test guest's `vtorque-mounts`: one line per mount, the path last (it may hold
    spaces): `9p TAG rw|ro PATH` and `data SERIAL - PATH`."""
    lines = [f"9p {s.tag} {'ro' if s.readonly else 'rw'} {s.target}\n" for s in spec.shares]
    if spec.scratch is not None:
        lines.append(f"data {DATA_SERIAL} - {DATA_MOUNT}\n")
    return "".join(lines)
