"""cloud-init NoCloud seeds: documents built as pure data, written as an ISO by pycdlib."""

from __future__ import annotations

import io
import os

import pycdlib
import yaml

from vtorque.vm.spec import GuestSpec


def seed_documents(spec: GuestSpec) -> dict[str, str]:
    """meta-data, user-data and network-config for one guest (no I/O)."""
    meta = {"instance-id": spec.name, "local-hostname": spec.hostname}
    user = {
        "hostname": spec.hostname,
        "preserve_hostname": False,
        "disable_root": True,
        "ssh_pwauth": False,
        "chpasswd": {"expire": False},
        # The host waits for this line on the serial console (see vm/readiness.py).
        "runcmd": [["sh", "-c", f"echo '{spec.ready_line}' > /dev/ttyS0"]],
    }
    docs = {
        "meta-data": yaml.safe_dump(meta, sort_keys=True),
        "user-data": "#cloud-config\n" + yaml.safe_dump(user, sort_keys=True),
    }
    if spec.nic is not None:
        network = {"version": 2, "ethernets": {"nic0": {
            "match": {"macaddress": spec.nic.mac}, "set-name": "eth0", "dhcp4": True}}}
        docs["network-config"] = yaml.safe_dump(network, sort_keys=True)
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
