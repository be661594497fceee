"""cloud-init NoCloud seeds: documents built as pure data, written as an ISO by pycdlib.

Two readers use a seed. cloud-init (22.4 in Debian 12) reads meta-data, user-data and
network-config; the direct-boot test guest's /init (scripts/build-test-image) reads the
plain vtorque-* files. What cloud-init does with the user-data, in its order:

- init stage: bootcmd (the owner's group, with its gid: cloud-init 22.4 cannot give a
  group a gid; the job's shares and /data, vm/mounts.py), write_files (everything
  root-owned), set_hostname, users-groups (the owner's account), ssh (the pinned host
  key). sshd starts after this stage.
- final stage: deferred write_files (files owned by the owner, who exists by then), then
  runcmd: Soft-RoCE, then a check of everything above that prints the ready line, or a
  `vtorque-error ...` line naming what is missing.

runcmd's commands are one /bin/sh script without `set -e`, and cloud-init goes on after a
failed module: the check, not the order, is what keeps the ready line from a half-set-up
guest.
"""

from __future__ import annotations

import io
import os
import re
import shlex
from dataclasses import dataclass

import pycdlib
import yaml

from vtorque import guest_layout
from vtorque.errors import Unsupported
from vtorque.vm import mounts
from vtorque.vm.spec import GuestSpec


# The job owner's SSH client inside a guest: the job's key, only the job's host keys.
# /etc/hosts of a cloud guest, before the job's lines (Debian's own lines).
HOSTS_HEAD = (
    "127.0.0.1 localhost\n"
    "::1 localhost ip6-localhost ip6-loopback\n"
    "ff02::1 ip6-allnodes\n"
    "ff02::2 ip6-allrouters\n"
)

USER_SHELL = "/bin/bash"
# Where the guest's check looks (tests point these elsewhere).
GUEST_CONSOLE = "/dev/ttyS0"
CLOUD_INIT_STATUS = "/run/cloud-init/status.json"
PROC_NET_TCP = "/proc/net/tcp"
# How long the guest's check waits for what systemd brings up on its own (the address on
# eth0, sshd listening, the rxe port active) before it reports a failure.
CHECK_WAIT_SECONDS = 60

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,31}")
_HOME = re.compile(r"/[A-Za-z0-9._@+/-]*")


@dataclass(frozen=True)
class SeedExtras:
    """What a guest needs beyond its own spec to join its job: the job's hosts table,
    the job's SSH trust (this guest's host key, the keys allowed to log in) and the job
    owner's account as it is on the node."""
    hosts: str = ""                                   # /etc/hosts lines of the whole job
    host_key_private: str | None = None               # OpenSSH ed25519 private key
    host_key_public: str | None = None
    authorized_keys: tuple[tuple[str, str], ...] = ()  # (user name, public key line)
    env: tuple[tuple[str, str], ...] = ()             # extra job environment in the guest
    hostfile: str = ""                                # Open MPI hostfile of the whole job
    nodefile: str = ""                                # PBS_NODEFILE of the whole job
    # The job owner (login name). A cloud guest creates the account (the test guest
    # shares the node's accounts): with user_uid, user_gid and user_home when given, so
    # files the job writes have the owner's ids and paths the job names exist.
    user: str | None = None
    user_uid: int | None = None
    user_gid: int | None = None                       # primary group id
    user_group: str | None = None                     # primary group name
    user_home: str | None = None
    # The job owner's SSH client in the guest (mpirun starts ranks on the other guests
    # over SSH): the job's private user key and every guest's pinned host key.
    user_key_private: str | None = None
    known_hosts: str = ""
    ssh_client_config: str = ""                       # /etc/ssh/ssh_config.d/00-vtorque.conf
    # Soft-RoCE: the commands that create the device on eth0 before the ready line, and
    # its name (checked active); () and None without.
    rdma_setup: tuple[tuple[str, ...], ...] = ()
    rdma_device: str | None = None


def _check_extras(extras: SeedExtras) -> None:
    """Refuse an account no guest can reproduce (names reach the shell and sshd there):
    the job's owner is at fault, not the node, so the job is refused, not requeued."""
    names = [n for n, _ in extras.authorized_keys] + [n for n in (extras.user,
                                                                   extras.user_group) if n]
    for name in names:
        if not _NAME.fullmatch(name) or name.startswith("-"):
            raise Unsupported(f"seed: bad user or group name {name!r}")
    for what, value in (("uid", extras.user_uid), ("gid", extras.user_gid)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 < value < 2**31):
            raise Unsupported(f"seed: bad {what} {value!r} for the job owner")
    if extras.user_home is not None and (not _HOME.fullmatch(extras.user_home)
                                         or "/../" in extras.user_home + "/"
                                         or extras.user_home.rstrip("/") == ""):
        raise Unsupported(f"seed: bad home directory {extras.user_home!r}")
    if (extras.user_uid, extras.user_gid, extras.user_home) != (None, None, None) and \
            not extras.user:
        raise Unsupported("seed: the job owner's ids are given without the user name")


def hosts_file(spec: GuestSpec, extras: SeedExtras) -> str:
    """The whole /etc/hosts of a cloud guest: localhost, the job's guests, and the guest's
    own name on 127.0.1.1 only when the job's lines do not give it an address."""
    own = any(spec.hostname in line.split()[1:] for line in extras.hosts.splitlines())
    local = "" if own else f"127.0.1.1 {spec.hostname}\n"
    job = extras.hosts if not extras.hosts or extras.hosts.endswith("\n") else \
        extras.hosts + "\n"
    return HOSTS_HEAD + local + job


def _account(extras: SeedExtras) -> tuple[list, dict]:
    """(bootcmd, users entry) that create the job owner's account as on the node."""
    user: dict = {"name": extras.user, "shell": USER_SHELL, "lock_passwd": True}
    bootcmd = []
    if extras.user_uid is not None:
        user["uid"] = extras.user_uid
    if extras.user_home:
        user["homedir"] = extras.user_home
    if extras.user_gid is not None:
        # useradd --gid takes the number; the group must exist first, and cloud-init's
        # `groups` cannot give one a gid. When the node's group name is taken in the
        # image by another gid, the gid still wins (the name is the one thing lost).
        gid = extras.user_gid
        group = extras.user_group or f"vtorque{gid}"
        bootcmd.append(["sh", "-c",
                        f"getent group {gid} >/dev/null || groupadd -g {gid} {group} || "
                        f"groupadd -g {gid} vtorque{gid}"])
        user["primary_group"] = str(gid)
        user["no_user_group"] = True
    return bootcmd, user


def _want(condition: str, message: str) -> str:
    return f"{condition} || fail {shlex.quote(message)}\n"


def _wait(condition: str, message: str) -> str:
    """Wait up to CHECK_WAIT_SECONDS for a shell condition, then fail with message."""
    return (f"n=0; until {condition}; do n=$((n + 1)); "
            f"[ $n -le {CHECK_WAIT_SECONDS * 4} ] || fail {shlex.quote(message)}; "
            "sleep 0.25; done\n")


def check_script(spec: GuestSpec, extras: SeedExtras) -> str:
    """The guest's last runcmd step: checks that cloud-init applied everything the seed
    asks for, then prints the ready line on the serial console; on the first missing
    piece prints `vtorque-error WHAT` there instead (vm/readiness.py reads both)."""
    q = shlex.quote
    s = ("fail() { printf 'vtorque-error %s\\n' \"$(printf %s \"$*\" | tr '\\r\\n' '  ' | "
         f"cut -c1-300)\" > {GUEST_CONSOLE}; exit 1; }}\n")
    # cloud-init's stages so far: any module that raised (users-groups, write_files, ssh,
    # set_hostname, ...) is listed in status.json; modules-final is still running.
    s += ("errors=$(python3 -c 'import json\n"
          f"v1 = json.load(open(\"{CLOUD_INIT_STATUS}\"))[\"v1\"]\n"
          "print(\"; \".join(str(e) for k, st in sorted(v1.items()) if isinstance(st, dict)"
          " and k != \"modules-final\" for e in st.get(\"errors\") or []))' 2>&1) ||"
          " fail \"cloud-init status unreadable: $errors\"\n"
          "[ -z \"$errors\" ] || fail \"cloud-init failed: $errors\"\n")
    s += _want(f"[ \"$(hostname)\" = {q(spec.hostname)} ]",
               f"hostname is not {spec.hostname}")
    s += _want(f"getent hosts {q(spec.hostname)} >/dev/null",
               f"hosts: {spec.hostname} does not resolve")
    if extras.user:
        u = q(extras.user)
        s += _want(f"entry=$(getent passwd {u})", f"account: no user {extras.user}")
        fields = [(3, extras.user_uid, "uid"), (4, extras.user_gid, "gid"),
                  (6, extras.user_home, "home")]
        for index, value, what in fields:
            if value is not None:
                s += _want(f"[ \"$(echo \"$entry\" | cut -d: -f{index})\" = {q(str(value))} ]",
                           f"account: {extras.user} has the wrong {what}, not {value}")
        s += _want("home=$(echo \"$entry\" | cut -d: -f6) && [ -d \"$home\" ] && "
                   f"[ \"$(stat -c %U \"$home\")\" = {u} ]",
                   f"account: no home directory owned by {extras.user}")
    for name, _key in extras.authorized_keys:
        s += _want(f"[ -s {guest_layout.AUTHORIZED_KEYS}/{name} ]",
                   f"authorized keys: none for {name}")
    if extras.host_key_private and extras.host_key_public:
        pinned = " ".join(extras.host_key_public.split()[:2])
        s += _want(f"[ \"$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)\" = {q(pinned)} ]",
                   "ssh host key: not the pinned key")
    if extras.user and extras.user_key_private:
        key = guest_layout.USER_KEY
        s += _want(f"[ \"$(stat -c %U:%a {key})\" = {q(extras.user + ':600')} ]",
                   f"user key: {key} is not owned by {extras.user}, mode 0600")
    for path, text in ((guest_layout.KNOWN_HOSTS, extras.known_hosts),
                       (guest_layout.HOSTFILE, extras.hostfile),
                       (guest_layout.NODEFILE, extras.nodefile)):
        if text:
            s += _want(f"[ -s {path} ]", f"seed files: {path} is missing")
    s += mounts.check_lines(spec)
    if spec.nic is not None:
        s += _want("[ -e /sys/class/net/eth0 ]", "network: no eth0")
        if spec.nic.address:
            cidr = f"{spec.nic.address}/{spec.nic.prefix}"
            s += _wait(f"ip -4 -o addr show dev eth0 | grep -q {q(' ' + cidr + ' ')}",
                       f"network: eth0 has no address {cidr}")
            if spec.nic.gateway:
                via = q(f"via {spec.nic.gateway} ")
                s += _wait(f"ip -4 route show default | grep -q {via}",
                           f"network: no default route via {spec.nic.gateway}")
        else:
            s += _wait("ip -4 -o addr show dev eth0 | grep -q ' inet '",
                       "network: no DHCP address on eth0")
        s += _want(f"[ \"$(cat /sys/class/net/eth0/mtu)\" = {spec.nic.mtu} ]",
                   f"network: the MTU of eth0 is not {spec.nic.mtu}")
    if extras.rdma_device:
        device = extras.rdma_device
        s += _wait(f"rdma link show {q(device)}/1 2>/dev/null | grep -q ACTIVE",
                   f"rdma: {device} is not active on eth0")
    # sshd starts after cloud-init's init stage (keys and configuration in place); it
    # listens on 0.0.0.0:22 (0016, state 0A) once up.
    s += _wait(f"grep -q ' 00000000:0016 00000000:0000 0A ' {PROC_NET_TCP}",
               "sshd: not listening on port 22")
    s += f"echo '{spec.ready_line}' > {GUEST_CONSOLE}\n"
    return s


class _SeedDumper(yaml.SafeDumper):
    """Multi-line strings (files, the check script) as literal blocks: readable seeds."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SeedDumper.add_representer(str, _str)


def _dump(data: dict) -> str:
    return yaml.dump(data, Dumper=_SeedDumper, sort_keys=True)


def seed_documents(spec: GuestSpec, extras: SeedExtras | None = None) -> dict[str, str]:
    """The seed's files for one guest (no I/O): cloud-init's meta-data, user-data and
    network-config, plus vtorque-* files that the direct-boot test guest's init reads."""
    extras = extras or SeedExtras()
    _check_extras(extras)
    meta = {"instance-id": spec.name, "local-hostname": spec.hostname}
    user: dict = {
        "hostname": spec.hostname,
        "preserve_hostname": False,
        # /etc/hosts is written whole below; cloud-init must not rewrite it from its
        # template (update_etc_hosts runs after write_files).
        "manage_etc_hosts": False,
        "disable_root": True,
        "ssh_pwauth": False,
        "chpasswd": {"expire": False},
        # Soft-RoCE, then the check that prints the ready line (see vm/readiness.py).
        "runcmd": [*(list(c) for c in extras.rdma_setup),
                   ["sh", "-c", check_script(spec, extras)]],
    }
    bootcmd: list = []
    if extras.user:
        bootcmd, account = _account(extras)
        user["users"] = [account]
    mount = mounts.mount_script(spec)
    if mount:
        bootcmd.append(["sh", "-c", mount])
    if bootcmd:
        user["bootcmd"] = bootcmd
    write_files: list[dict] = [{"path": "/etc/hosts", "content": hosts_file(spec, extras),
                                "permissions": "0644"}]
    if extras.host_key_private:
        # With ssh_keys, cloud-init generates no keys (and 22.4's schema refuses an empty
        # ssh_genkeytypes).
        user["ssh_deletekeys"] = True
        user["ssh_keys"] = {"ed25519_private": extras.host_key_private,
                            "ed25519_public": extras.host_key_public}
    for name, key in extras.authorized_keys:
        write_files.append({"path": f"{guest_layout.AUTHORIZED_KEYS}/{name}",
                            "content": key + "\n", "permissions": "0644"})
    # sshd reads its drop-ins first, and the first value of a keyword wins. Passwords are
    # refused here too: ssh_pwauth is applied by set-passwords, a module lean images drop.
    sshd = ["PasswordAuthentication no\n", "KbdInteractiveAuthentication no\n"]
    if extras.authorized_keys:
        sshd.append(f"AuthorizedKeysFile {guest_layout.AUTHORIZED_KEYS}/%u\n")
    if extras.env:
        # Every login (the job's shell, mpirun's daemons on the other guests) gets the
        # job environment; values are the host's own, free of spaces and quotes.
        sshd.append("SetEnv " + " ".join(f"{k}={v}" for k, v in extras.env) + "\n")
    write_files.append({"path": guest_layout.SSHD_CONFIG, "permissions": "0644",
                        "content": "".join(sshd)})
    if spec.rdma:
        # Verbs pin the memory they register.
        write_files.append({"path": "/etc/security/limits.d/vtorque-rdma.conf",
                            "permissions": "0644", "content": "* - memlock unlimited\n"})
    if extras.known_hosts:
        write_files.append({"path": guest_layout.KNOWN_HOSTS, "content": extras.known_hosts,
                            "permissions": "0644"})
    for path, text in ((guest_layout.HOSTFILE, extras.hostfile),
                       (guest_layout.NODEFILE, extras.nodefile)):
        if text:
            write_files.append({"path": path, "content": text,
                                "permissions": "0644"})
    if extras.user and extras.user_key_private:
        write_files.append({"path": guest_layout.SSH_CLIENT_CONFIG,
                            "permissions": "0644", "content": extras.ssh_client_config})
        # Owned by the job owner, whose account users-groups creates after write_files:
        # deferred to the final stage (an unknown owner fails this file and every one
        # after it). The user alone: the file's group stays root's.
        write_files.append({"path": guest_layout.USER_KEY, "permissions": "0600",
                            "owner": extras.user, "defer": True,
                            "content": extras.user_key_private})
    user["write_files"] = write_files
    docs = {
        "meta-data": yaml.safe_dump(meta, sort_keys=True),
        "user-data": "#cloud-config\n" + _dump(user),
    }
    if spec.nic is not None:
        eth: dict = {"match": {"macaddress": spec.nic.mac}, "set-name": "eth0"}
        if spec.nic.address:
            eth["addresses"] = [f"{spec.nic.address}/{spec.nic.prefix}"]
            if spec.nic.gateway:
                # Not `to: default`: cloud-init 22.4 refuses it ("Address default is not
                # a valid ip address").
                eth["routes"] = [{"to": "0.0.0.0/0", "via": spec.nic.gateway}]
        else:
            eth["dhcp4"] = True
        eth["mtu"] = spec.nic.mtu
        docs["network-config"] = yaml.safe_dump({"version": 2, "ethernets": {"nic0": eth}},
                                                sort_keys=True)
    # The same facts as plain files for guests without cloud-init (the test guest's init).
    if extras.hosts:
        docs["vtorque-hosts"] = extras.hosts
    if extras.host_key_private:
        docs["vtorque-ssh-host-key"] = extras.host_key_private
        docs["vtorque-ssh-host-key.pub"] = (extras.host_key_public or "") + "\n"
    if extras.authorized_keys:
        docs["vtorque-authorized-keys"] = "".join(f"{name} {key}\n"
                                                  for name, key in extras.authorized_keys)
    if extras.known_hosts:
        docs["vtorque-known-hosts"] = extras.known_hosts
    if extras.user and extras.user_key_private:
        docs["vtorque-user-key"] = f"{extras.user}\n{extras.user_key_private}"
    if extras.hostfile:
        docs["vtorque-hostfile"] = extras.hostfile
    if extras.nodefile:
        docs["vtorque-nodefile"] = extras.nodefile
    if extras.env:
        docs["vtorque-env"] = "".join(f"{k}={v}\n" for k, v in extras.env)
    if spec.shares or spec.scratch is not None:
        docs[mounts.TEST_GUEST_FILE] = mounts.test_guest_file(spec)
    return docs


def write_seed_iso(path: str, documents: dict[str, str], mode: int = 0o400,
                   gid: int | None = None, uid: int | None = None) -> None:
    """Write an ISO 9660 image labelled `cidata` holding `documents` (Joliet + Rock Ridge
    names, so cloud-init sees meta-data, not META_DAT.;1), owned by `uid`:`gid` (the
    guest's QEMU identity: it holds the guest's private host key)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, text) in enumerate(sorted(documents.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/F{index}.;1", rr_name=name,
                   joliet_path=f"/{name}")
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            iso.write_fp(handle)
        if uid is not None or gid is not None:
            os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        iso.close()
