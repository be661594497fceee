"""cloud-init NoCloud seeds: documents built as pure data, written as an ISO by pycdlib."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pycdlib
import yaml

from vtorque.ibverbs.transport import RXE_COMMANDS, SOFT_ROCE
from vtorque.vm.spec import GuestSpec


# The job owner's SSH client inside a guest: the job's key, only the job's host keys.
SSH_CLIENT_CONFIG = (
    "Host *\n"
    "    IdentityFile /etc/vtorque/user_key\n"
    "    IdentitiesOnly yes\n"
    "    UserKnownHostsFile /etc/vtorque/known_hosts\n"
    "    GlobalKnownHostsFile none\n"
    "    StrictHostKeyChecking yes\n"
    "    BatchMode yes\n"
    "    LogLevel ERROR\n"
)


@dataclass(frozen=True)
class SeedExtras:
    """What a guest needs beyond its own spec to join its job: the job's hosts table and
    the job's SSH trust (this guest's host key, the keys allowed to log in)."""
    hosts: str = ""                                   # /etc/hosts lines of the whole job
    host_key_private: str | None = None               # OpenSSH ed25519 private key
    host_key_public: str | None = None
    authorized_keys: tuple[tuple[str, str], ...] = ()  # (user name, public key line)
    env: tuple[tuple[str, str], ...] = ()             # extra job environment in the guest
    hostfile: str = ""                                # Open MPI hostfile of the whole job
    nodefile: str = ""                                # PBS_NODEFILE of the whole job
    # The job owner's SSH client in the guest (mpirun starts ranks on the other guests
    # over SSH): the job's private user key and every guest's pinned host key.
    user: str | None = None
    user_key_private: str | None = None
    known_hosts: str = ""


def seed_documents(spec: GuestSpec, extras: SeedExtras | None = None) -> dict[str, str]:
    """The seed's files for one guest (no I/O): cloud-init's meta-data, user-data and
    network-config, plus vtorque-* files that the direct-boot test guest's init reads."""
    extras = extras or SeedExtras()
    meta = {"instance-id": spec.name, "local-hostname": spec.hostname}
    user: dict = {
        "hostname": spec.hostname,
        "preserve_hostname": False,
        "disable_root": True,
        "ssh_pwauth": False,
        "chpasswd": {"expire": False},
        # The host waits for this line on the serial console (see vm/readiness.py).
        "runcmd": [*(RXE_COMMANDS if spec.rdma == SOFT_ROCE else ()),
                   ["sh", "-c", f"echo '{spec.ready_line}' > /dev/ttyS0"]],
    }
    write_files = []
    if extras.host_key_private:
        user["ssh_deletekeys"] = True
        user["ssh_genkeytypes"] = []
        user["ssh_keys"] = {"ed25519_private": extras.host_key_private,
                            "ed25519_public": extras.host_key_public}
    for name, key in extras.authorized_keys:
        write_files.append({"path": f"/etc/vtorque/authorized_keys/{name}",
                            "content": key + "\n", "permissions": "0644"})
    sshd = []
    if extras.authorized_keys:
        sshd.append("AuthorizedKeysFile /etc/vtorque/authorized_keys/%u\n")
    if extras.env:
        # Every login (the job's shell, mpirun's daemons on the other guests) gets the
        # job environment; values are the host's own, free of spaces and quotes.
        sshd.append("SetEnv " + " ".join(f"{k}={v}" for k, v in extras.env) + "\n")
    if sshd:
        write_files.append({"path": "/etc/ssh/sshd_config.d/vtorque.conf", "permissions": "0644",
                            "content": "".join(sshd)})
    if spec.rdma:
        # Verbs pin the memory they register.
        write_files.append({"path": "/etc/security/limits.d/vtorque-rdma.conf",
                            "permissions": "0644", "content": "* - memlock unlimited\n"})
    if extras.hosts:
        write_files.append({"path": "/etc/hosts", "append": True, "content": extras.hosts})
    if extras.known_hosts:
        write_files.append({"path": "/etc/vtorque/known_hosts", "content": extras.known_hosts,
                            "permissions": "0644"})
    if extras.user and extras.user_key_private:
        write_files.append({"path": "/etc/vtorque/user_key", "permissions": "0600",
                            "owner": f"{extras.user}:{extras.user}",
                            "content": extras.user_key_private})
        write_files.append({"path": "/etc/ssh/ssh_config.d/00-vtorque.conf",
                            "permissions": "0644", "content": SSH_CLIENT_CONFIG})
    for name, text in (("hostfile", extras.hostfile), ("nodefile", extras.nodefile)):
        if text:
            write_files.append({"path": f"/etc/vtorque/{name}", "content": text,
                                "permissions": "0644"})
    if write_files:
        user["write_files"] = write_files
        user["manage_etc_hosts"] = False
    docs = {
        "meta-data": yaml.safe_dump(meta, sort_keys=True),
        "user-data": "#cloud-config\n" + yaml.safe_dump(user, sort_keys=True),
    }
    if spec.nic is not None:
        eth: dict = {"match": {"macaddress": spec.nic.mac}, "set-name": "eth0"}
        if spec.nic.address:
            eth["addresses"] = [f"{spec.nic.address}/{spec.nic.prefix}"]
            if spec.nic.gateway:
                eth["routes"] = [{"to": "0.0.0.0/0", "via": spec.nic.gateway}]
        else:
            eth["dhcp4"] = True
        if spec.nic.mtu != 1500:
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
    return docs


def write_seed_iso(path: str, documents: dict[str, str], mode: int = 0o640,
                   gid: int | None = None) -> None:
    """Write an ISO 9660 image labelled `cidata` holding `documents` (Joliet + Rock Ridge
    names, so cloud-init sees meta-data, not META_DAT.;1)."""
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
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        iso.close()
