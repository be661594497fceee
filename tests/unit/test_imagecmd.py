"""Unit tests of `vtorque image add|remove|verify|list` (vtorque/admin/imagecmd.py): files
copied into the pool root-owned with their sha256, refused with the root side's own checks
(backing file, external data file, format mismatch) and nothing left behind, removal
refused while a job uses the image, drift found by re-hashing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.unit.operator_site import write_config
from vtorque import events
from vtorque.admin import cli
from vtorque.cluster import handoff
from vtorque.images import Catalog

QEMU_IMG = shutil.which("qemu-img")


@pytest.fixture
def cfg_file(tmp_path: Path, config_data: dict):
    return write_config(tmp_path / "vtorque.yaml", config_data, {"node_name": "n1"})


def run(config, capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--config", config.path, "image", *args])
    out, err = capsys.readouterr()
    return code, out, err


def raw_disk(path: Path, size: int = 1 << 20) -> Path:
    with open(path, "wb") as handle:
        handle.write(b"\xeb\x63\x90" + b"boot" * 100)
        handle.truncate(size)
    return path


def qemu_img(*args: str) -> None:
    assert QEMU_IMG, "scripts/setup installs qemu-utils"
    subprocess.run([QEMU_IMG, *args], check=True, capture_output=True, timeout=60)


def pool_files(config) -> list[str]:
    return sorted(os.listdir(config.image_pool))


def test_add_copies_hashes_and_authorizes(cfg_file, tmp_path: Path, capsys: Any) -> None:
    disk = raw_disk(tmp_path / "src.img")
    code, out, err = run(cfg_file, capsys, "add", "deb", str(disk), "--format", "raw",
                         "--distro", "debian")
    assert (code, err) == (0, "")
    sha = hashlib.sha256(disk.read_bytes()).hexdigest()
    assert out.splitlines()[-1] == f"image deb added to {cfg_file.image_pool}: linux, " \
                                   "debian, x86_64"
    assert f"sha256 {sha}" in out
    copy = Path(cfg_file.image_pool) / "deb.raw"
    st = copy.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)
    assert st.st_blocks * 512 < st.st_size            # the zeros stayed holes
    image = Catalog(cfg_file.image_pool).authorize("deb")
    assert (image.disk.sha256, image.disk.format) == (sha, "raw")
    code, _, err = run(cfg_file, capsys, "add", "deb", str(disk), "--format", "raw",
                       "--distro", "debian")
    assert code == 1 and "exists already" in err


def test_a_kernel_image_with_its_initrd(cfg_file, tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "k").write_bytes(b"kernel")
    (tmp_path / "i").write_bytes(b"initrd")
    code, _, err = run(cfg_file, capsys, "add", "tg", str(tmp_path / "k"), "--kind", "kernel",
                       "--initrd", str(tmp_path / "i"), "--cmdline", "console=ttyS0 quiet",
                       "--distro", "debian", "--host-share")
    assert (code, err) == (0, "")
    image = Catalog(cfg_file.image_pool).authorize("tg")
    assert (image.kind, image.cmdline, image.host_share) == ("kernel", "console=ttyS0 quiet",
                                                             True)
    assert image.initrd.sha256 == hashlib.sha256(b"initrd").hexdigest()


@pytest.mark.parametrize(("make", "fmt", "reason"), [
    ("backing", "qcow2", "has a backing file"),
    ("data_file", "qcow2", "has an external data file"),
    ("qcow2_as_raw", "raw", "carries a qcow2 header"),
    ("raw_as_qcow2", "qcow2", "is not a qcow2 image"),
])
def test_refused_like_the_root_side_and_nothing_left(cfg_file, tmp_path: Path, capsys: Any,
                                                     make: str, fmt: str, reason: str) -> None:
    base = raw_disk(tmp_path / "base.raw")
    src = tmp_path / "src"
    if make == "backing":
        qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(src))
    elif make == "data_file":
        qemu_img("create", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.raw'}",
                 str(src), "1M")
    elif make == "qcow2_as_raw":
        qemu_img("create", "-f", "qcow2", str(src), "1M")
    else:
        raw_disk(src)
    before = pool_files(cfg_file)
    code, out, err = run(cfg_file, capsys, "add", "bad", str(src), "--format", fmt,
                         "--distro", "debian")
    assert code == 1 and out == "" and reason in err and len(err.splitlines()) == 1
    assert pool_files(cfg_file) == before


def test_convert_makes_a_standalone_qcow2(tmp_path: Path, config_data: dict,
                                          capsys: Any) -> None:
    # qemu-img runs as nobody: its work directory must be reachable, so not under pytest's
    # 0700 tmp_path.
    state = Path("/var/tmp") / f"vtorque-unit-{uuid.uuid4().hex[:10]}"
    try:
        config = write_config(tmp_path / "vtorque.yaml", config_data,
                              {"state_dir": str(state)})
        disk = raw_disk(tmp_path / "src.raw")
        code, out, err = run(config, capsys, "add", "conv", str(disk), "--format", "raw",
                             "--convert", "--distro", "debian")
        assert (code, err) == (0, ""), err
        image = Catalog(config.image_pool).authorize("conv")
        assert image.disk.format == "qcow2" and image.disk.path.endswith("conv.qcow2")
        assert os.listdir(state / ".convert") == []       # the work directory is gone
        vmdk = tmp_path / "d.vmdk"
        vmdk.write_text("# Disk DescriptorFile\nRW 2048 FLAT \"/etc/shadow\" 0\n")
        code, _, err = run(config, capsys, "add", "vm", str(vmdk), "--format", "vmdk",
                           "--convert", "--distro", "debian")
        assert code == 1 and "not a monolithic sparse VMDK" in err
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_remove_refuses_an_image_a_running_job_uses(cfg_file, tmp_path: Path,
                                                    capsys: Any) -> None:
    run(cfg_file, capsys, "add", "deb", str(raw_disk(tmp_path / "d")), "--format", "raw",
        "--distro", "debian")
    handoff.publish(cfg_file, "9", handoff.NodeStatus("n1", handoff.READY, guests=[
        {"rank": 0, "name": "x", "hostname": "vt9-0"}], job_id="9"))
    events.record(cfg_file, "9", "ready", seconds=1.0, guests=1, image="deb")
    code, out, _ = run(cfg_file, capsys, "list", "--json")
    [row] = json.loads(out)
    assert (row["name"], row["jobs"], row["size"]) == ("deb", ["9"], 1 << 20)
    code, _, err = run(cfg_file, capsys, "remove", "deb")
    assert code == 1 and err == "vtorque: image 'deb' is used by running job(s) 9; wait " \
                                "for them to end, or --force\n"
    code, out, _ = run(cfg_file, capsys, "remove", "deb", "--force")
    assert code == 0 and "left running: job(s) 9" in out
    assert pool_files(cfg_file) == []


def test_verify_rehashes_and_reports_drift(cfg_file, tmp_path: Path, capsys: Any) -> None:
    run(cfg_file, capsys, "add", "deb", str(raw_disk(tmp_path / "d")), "--format", "raw",
        "--distro", "debian")
    Catalog(cfg_file.image_pool, checksum_cache=str(tmp_path / "cache")).authorize("deb")
    code, out, _ = run(cfg_file, capsys, "verify")
    assert code == 0 and out.startswith("deb\tok\tdisk ")
    with open(Path(cfg_file.image_pool) / "deb.raw", "r+b") as handle:
        handle.seek(4096)
        handle.write(b"tampered")
    code, out, _ = run(cfg_file, capsys, "verify")
    assert code == 1 and out.startswith("deb\tDRIFT\tdisk deb.raw: descriptor says ")


def test_add_and_remove_need_root(cfg_file, tmp_path: Path, capsys: Any,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, _, err = run(cfg_file, capsys, "add", "x", str(tmp_path), "--format", "raw",
                       "--distro", "d")
    assert code == 1 and err == "vtorque: image add must run as root (the pool is root's)\n"
    assert run(cfg_file, capsys, "remove", "x")[0] == 1


def test_descriptor_text_is_what_the_catalog_reads() -> None:
    from vtorque.admin.imagecmd import descriptor_text
    text = descriptor_text("n", "linux", "debian", "x86_64",
                           {"disk": ("n.qcow2", "0" * 64, "qcow2")})
    assert "sha256: '" + "0" * 64 + "'" in text and "format: qcow2" in text
