"""Unit tests of vtorque.vm.seed: cloud-init NoCloud documents and the seed ISO."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pycdlib
import pytest
import yaml

from vtorque.vm.seed import seed_documents, write_seed_iso

NOBODY_GID = 65534


def test_documents_without_nic(make_specs, fixed) -> None:
    spec = make_specs("linux")[0]
    docs = seed_documents(spec)
    assert sorted(docs) == ["meta-data", "user-data"]
    meta = yaml.safe_load(docs["meta-data"])
    assert meta == {"instance-id": spec.name, "local-hostname": "vt12-0"}
    assert docs["user-data"].startswith("#cloud-config\n")
    user = yaml.safe_load(docs["user-data"])
    assert user["hostname"] == "vt12-0"
    assert user["preserve_hostname"] is False
    assert user["disable_root"] is True and user["ssh_pwauth"] is False
    [command] = user["runcmd"]
    assert command[:2] == ["sh", "-c"]
    assert f"echo 'vtorque-ready {fixed.token(0)}' > /dev/ttyS0" == command[2]
    assert spec.ready_line in command[2]


@pytest.mark.parametrize("mode", ["network", "bridge"])
def test_documents_with_nic(make_specs, mode: str) -> None:
    spec = make_specs("linux", network={"mode": mode})[0]
    docs = seed_documents(spec)
    assert sorted(docs) == ["meta-data", "network-config", "user-data"]
    network = yaml.safe_load(docs["network-config"])
    assert network["version"] == 2
    nic = network["ethernets"]["nic0"]
    assert nic["match"] == {"macaddress": spec.nic.mac}
    assert nic["dhcp4"] is True and nic["set-name"] == "eth0"


def test_each_guest_gets_its_own_documents(make_specs) -> None:
    specs = make_specs("linux", "vms_per_node=2")
    a, b = (seed_documents(s) for s in specs)
    assert a["meta-data"] != b["meta-data"]
    assert specs[0].ready_token in a["user-data"] and specs[1].ready_token not in a["user-data"]


def read_iso(path: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        volume = iso.pvd.volume_identifier.decode().strip()
        by_rr, by_joliet = {}, {}
        for name in ("meta-data", "user-data", "network-config"):
            for store, kwargs in ((by_rr, {"rr_path": f"/{name}"}),
                                  (by_joliet, {"joliet_path": f"/{name}"})):
                out = io.BytesIO()
                try:
                    iso.get_file_from_iso_fp(out, **kwargs)
                except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                    continue
                store[name] = out.getvalue().decode()
        return volume, by_rr, by_joliet
    finally:
        iso.close()


def test_write_seed_iso_reads_back(tmp_path: Path, make_specs) -> None:
    spec = make_specs("linux", network={"mode": "bridge"})[0]
    docs = seed_documents(spec)
    (tmp_path / "job").mkdir()
    path = tmp_path / "job" / "seed.iso"
    write_seed_iso(str(path), docs)
    volume, by_rr, by_joliet = read_iso(path)
    assert volume == "cidata"
    assert by_rr == docs
    assert by_joliet == docs
    assert yaml.safe_load(by_rr["user-data"])["hostname"] == spec.hostname
    assert yaml.safe_load(by_rr["meta-data"])["instance-id"] == spec.name
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert os.listdir(tmp_path / "job") == ["seed.iso"]  # no temp file left


def test_write_seed_iso_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_seed_iso(str(tmp_path / "s.iso"), {"meta-data": "a: 1\n"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.iso").st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to another group needs root")
def test_write_seed_iso_group(tmp_path: Path) -> None:
    write_seed_iso(str(tmp_path / "s.iso"), {"meta-data": "a: 1\n"}, gid=NOBODY_GID)
    assert os.stat(tmp_path / "s.iso").st_gid == NOBODY_GID


def test_write_seed_iso_replaces_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "seed.iso"
    link.symlink_to(victim)
    write_seed_iso(str(link), {"meta-data": "a: 1\n"})
    assert not link.is_symlink()
    assert victim.read_text() == "precious"
    assert read_iso(link)[1] == {"meta-data": "a: 1\n"}


def test_write_seed_iso_refuses_a_planted_temp_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "seed.iso.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_seed_iso(str(tmp_path / "seed.iso"), {"meta-data": "a: 1\n"})
    assert victim.read_text() == "precious"
    assert not (tmp_path / "seed.iso").exists()
