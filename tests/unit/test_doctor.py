"""Unit tests of `vtorque doctor` (vtorque/admin/doctor.py, doctor_hooks.py, kvmprobe.py):
the KVM probe image is what its assembly says and really boots under TCG; each check's
verdict for the facts it is given; the hook shims as the real installers write them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.standins import fake_sysfs
from tests.unit.operator_site import write_config
from vtorque.admin import cli, doctor, doctor_hooks, kvmprobe

ROOT = Path(__file__).resolve().parents[2]


def test_the_probe_image_is_its_assembly(tmp_path: Path) -> None:
    if not (shutil.which("as") and shutil.which("ld")):
        pytest.skip("binutils (as, ld) not installed: cannot reassemble kvmprobe.S")
    obj, image = tmp_path / "p.o", tmp_path / "p.rom"
    subprocess.run(["as", "-o", str(obj), str(ROOT / "vtorque/admin/kvmprobe.S")],
                   check=True, timeout=60)
    subprocess.run(["ld", "-Ttext=0", "--oformat", "binary", "-o", str(image), str(obj)],
                   check=True, timeout=60)
    assert image.read_bytes() == kvmprobe.rom()


def test_the_probe_boots_under_tcg() -> None:
    answer = kvmprobe.boot("tcg")
    assert answer.ok and answer.stages == "RPEGL", answer


def test_a_hang_says_where_it_stopped() -> None:
    hung = kvmprobe._verdict("kvm", "R", 10.0, None, True, "", 10.0)
    assert not hung.ok and hung.timed_out
    assert hung.detail == "a kvm guest hangs entering protected mode (reached real mode; " \
                          "stopped after 10 s)"
    broke = kvmprobe._verdict("kvm", "", 0.1, 1, False, "Could not access KVM kernel "
                              "module: Permission denied\n", 10.0)
    assert "Permission denied" in broke.detail and not broke.timed_out


@pytest.mark.parametrize(("mode", "status"), [("auto", "fail"), ("kvm", "fail"),
                                              ("qemu", "warn")])
def test_a_hanging_kvm_fails_unless_guests_run_under_tcg(make_config: Any, mode: str,
                                                         status: str,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setattr(kvmprobe, "kvm_api", lambda: kvmprobe.ApiAnswer(True, "api ok", 12))
    monkeypatch.setattr(kvmprobe, "boot", lambda accel: kvmprobe._verdict(
        accel, "R", 10.0, None, True, "", 10.0))
    check = doctor.check_kvm(make_config({"hypervisor": mode}))
    assert check.status == status and "hangs entering protected mode" in check.detail
    if status == "fail":
        assert "hypervisor: qemu" in check.fix


def test_working_or_absent_kvm(make_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kvmprobe, "kvm_api", lambda: kvmprobe.ApiAnswer(True, "api ok", 12))
    monkeypatch.setattr(kvmprobe, "boot", lambda accel: kvmprobe._verdict(
        accel, "RPEGL", 0.1, 99, False, "", 10.0))
    assert doctor.check_kvm(make_config()).status == "ok"
    monkeypatch.setattr(kvmprobe, "kvm_api", lambda: kvmprobe.ApiAnswer(False, "no kvm"))
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert doctor.check_kvm(make_config({"hypervisor": "auto"})).status == "ok"
    assert doctor.check_kvm(make_config({"hypervisor": "kvm"})).status == "fail"


def test_parsers() -> None:
    text = ("Supported machines are:\npc   Standard PC (i440FX + PIIX, 1996) (alias of "
            "pc-i440fx-7.2)\npc-i440fx-7.2 Standard PC\nq35  Standard PC (Q35 + ICH9, 2009) "
            "(alias of pc-q35-7.2)\nnone empty machine\n")
    assert {"pc", "q35", "pc-q35-7.2", "none"} <= doctor.machine_types(text)
    assert doctor.libvirt_versions("Running hypervisor: QEMU 7.2.22\nRunning against "
                                   "daemon: 9.0.0\n") == "libvirtd 9.0.0, hypervisor QEMU 7.2.22"
    assert doctor_hooks.slurm_conf_hooks("Prolog=/a/prolog # x\nepilog = /a/epilog\n"
                                         "#Prolog=/old\n") == {"prolog": "/a/prolog",
                                                               "epilog": "/a/epilog"}


@pytest.fixture
def site(tmp_path: Path, config_data: dict):
    shell = tmp_path / "job-shell"
    return write_config(tmp_path / "vtorque.yaml", config_data,
                        {"batch": {"system": "slurm", "job_shell": str(shell)}})


def install_slurm(config, directory: Path, python: str = sys.executable) -> None:
    subprocess.run([str(ROOT / "contrib/slurm/install"), "--dir", str(directory), "--python",
                    python, "--config", config.path, "--job-shell", config.batch.job_shell],
                   check=True, capture_output=True, timeout=60)


def test_slurm_shims_pointing_at_this_installation(site, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hooks = tmp_path / "hooks"
    install_slurm(site, hooks)
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"Prolog={hooks}/prolog\nEpilog={hooks}/epilog\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    assert doctor_hooks.check_hooks(site, "slurm", str(hooks))[0] == "ok"
    assert doctor_hooks.check_job_shell(site)[0] == "ok"
    conf.write_text(f"Prolog=/etc/slurm/other\nEpilog={hooks}/epilog\n")
    status, detail, fix = doctor_hooks.check_hooks(site, "slurm", str(hooks))
    assert status == "fail" and "Prolog=/etc/slurm/other does not run" in detail
    prolog = hooks / "prolog"
    prolog.write_text(prolog.read_text().replace(f"PYTHON={sys.executable}",
                                                 "PYTHON=/nonexistent/python"))
    status, detail, fix = doctor_hooks.check_hooks(site, "slurm", str(hooks))
    assert "runs /nonexistent/python, which is not executable" in detail
    assert fix.startswith("run contrib/slurm/install")
    other = write_config(tmp_path / "other.yaml", {}, {"image_pool": site.image_pool})
    assert "uses config" in doctor_hooks.check_hooks(other, "slurm", str(hooks))[1]
    assert "is missing" in doctor_hooks.check_hooks(site, "slurm", str(tmp_path / "no"))[1]


def test_torque_shims_as_install_writes_them(site, tmp_path: Path) -> None:
    mom_priv = tmp_path / "mom_priv"
    mom_priv.mkdir()
    subprocess.run([str(ROOT / "contrib/torque_hooks/install"), "--mom-priv", str(mom_priv),
                    "--python", sys.executable, "--config", site.path, "--job-shell",
                    site.batch.job_shell], check=True, capture_output=True, timeout=60)
    assert doctor_hooks.check_hooks(site, "torque", str(mom_priv)) == (
        "ok", f"torque shims in {mom_priv} run this vtorque with {site.path}", "")
    (mom_priv / "epilogue").write_text("#!/bin/sh\nexit 0\n")
    assert "is not vtorque's" in doctor_hooks.check_hooks(site, "torque", str(mom_priv))[1]


def test_rdma_adapters_and_free_functions(make_config: Any, tmp_path: Path) -> None:
    root = tmp_path / "sysfs"
    fake_sysfs.connectx_node(root)
    check = doctor.check_rdma(make_config({"ibverbs": {"sysfs_root": str(root)}}))
    assert check.status == "ok" and "mlx5_0" in check.detail and "free" in check.detail
    empty = doctor.check_rdma(make_config({"ibverbs": {"sysfs_root": str(tmp_path / "no")}}))
    assert empty.detail == "no InfiniBand or RoCE adapter; vrdma jobs: refused here"


def test_a_broken_config_fails_with_its_problems(tmp_path: Path, capsys: Any) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hypervisor: xen\nbogus: 1\n")
    assert cli.main(["--config", str(bad), "doctor", "--json"]) == 1
    [check] = json.loads(capsys.readouterr().out)
    assert check["name"] == "config" and check["status"] == "fail"
    assert "hypervisor" in check["detail"] and "bogus" in check["detail"]


def test_huge_page_pools_per_size_and_numa_node(make_config: Any, tmp_path: Path) -> None:
    from tests.standins import fake_numa
    from vtorque.request import parse_request
    from vtorque.vm import hugepage_reservations
    from vtorque.vm.numa import guest_placements, read_topology
    root = tmp_path / "sysroot"
    fake_numa.add_nodes(root, ["0-3", "4-7"])
    fake_numa.set_pool(root, 2048, [(512, 500), (512, 512)], reserved=8)
    fake_numa.set_pool(root, 1 << 20, [(0, 0), (0, 0)])
    (root / "sys/kernel/mm/transparent_hugepage").mkdir(parents=True)
    (root / "sys/kernel/mm/transparent_hugepage/enabled").write_text(
        "always [madvise] never\n")
    cfg = make_config({"numa": {"sysfs_root": str(root)}})
    request = parse_request("vcpus=2,ram=64M,hugepages=2M", cfg)
    hugepage_reservations.reserve(cfg, "7.srv", request, guest_placements(
        cfg, request, (4, 5), read_topology(str(root))), "n1")
    check = doctor.check_hugepages(cfg)
    assert check.status == "ok"
    assert check.detail == (
        "2 MiB pages: 1024 in all, 1012 free, 8 reserved, 32 held for guests being started "
        "(NUMA node 0: 500 of 512 free, NUMA node 1: 512 of 512 free); 1 GiB pages: 0 in "
        "all, 0 free, 0 reserved (NUMA node 0: 0 of 0 free, NUMA node 1: 0 of 0 free); "
        "transparent huge pages: madvise")
    site = make_config({"numa": {"sysfs_root": str(root)},
                        "defaults": {"hugepages": "1G", "ram": "1G"}})
    check = doctor.check_hugepages(site)
    assert check.status == "fail" and "defaults.hugepages is 1G" in check.detail
    assert "hugepagesz=1G" in check.fix


def test_a_node_without_huge_pages(make_config: Any, tmp_path: Path) -> None:
    cfg = make_config({"numa": {"sysfs_root": str(tmp_path)}})
    check = doctor.check_hugepages(cfg)
    assert (check.status, check.detail) == ("ok", "no huge page pools; transparent huge "
                                            "pages: unavailable; jobs asking -vm hugepages "
                                            "are refused here")
    assert doctor.check_hugepages(make_config()).status in ("ok", "fail")


@pytest.mark.skipif(os.geteuid() != 0, reason="the template store trusts root's files only")
def test_snapshot_templates_counted_and_failed_ones_warned(make_config: Any,
                                                          tmp_path: Path) -> None:
    from vtorque.vm.template_store import TemplateStore
    config = make_config({"state_dir": str(tmp_path / "state")})
    assert doctor.check_templates(config).detail.startswith("0 in ")
    store = TemplateStore(config.state_dir)
    with store.locked("a" * 32):
        store.record_failure("a" * 32, "did not reach its snapshot point", "testguest")
    check = doctor.check_templates(config)
    assert check.status == doctor.WARN and "1 failed" in check.detail
    off = make_config({"state_dir": str(tmp_path / "state"),
                       "snapshots": {"enabled": False}})
    assert "every guest boots" in doctor.check_templates(off).detail
