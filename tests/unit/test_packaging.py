"""Packaging of the node side: `pip` builds a wheel of this tree that carries the
templates, the documented config, every contrib file (executable where the source is),
the man pages and the guides; installed into a fresh virtual environment, `vtorque --help`
and `vsub --help` run from it. And the reaper's systemd units, cron line and logrotate
file say what they must."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from vtorque.config import schema

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ("torque_hooks", "pbs_hooks", "slurm", "systemd", "cron", "logrotate")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the tracked tree (the build leaves the checkout
    alone)."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True, timeout=60).stdout
    src = tmp / "src"
    for name in listed.splitlines():
        path = ROOT / name
        if path.is_file() and not name.startswith(("build/", ".hypothesis/")):
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(tmp / "dist"), str(src)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = list((tmp / "dist").glob("vtorque-*.whl"))
    return built


def test_the_wheel_carries_templates_conf_contrib_and_man_pages(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in archive.infolist()}
        metadata = next(archive.read(n).decode() for n in names
                        if n.endswith(".dist-info/METADATA"))
    data = next(n.split("/")[0] for n in names if ".data/" in n) + "/data/share/"
    assert "vtorque/vm/templates/domain.xml.j2" in names
    assert data + "vtorque/conf/vtorque.yaml" in names
    for sub in CONTRIB:
        for path in (ROOT / "contrib" / sub).iterdir():
            entry = f"{data}vtorque/contrib/{sub}/{path.name}"
            assert entry in names, entry
            if os.access(path, os.X_OK):
                assert modes[entry] & 0o111, f"{entry} lost its executable bit"
    assert {data + "man/man1/vtorque.1", data + "man/man1/vsub.1"} <= names
    assert data + "doc/vtorque/user-guide.md" in names
    assert data + "doc/vtorque/admin-guide.md" in names
    assert "Requires-Dist: prometheus_client" in metadata


def test_installed_into_a_fresh_venv_both_commands_run(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                           "-q", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # The dependencies come from this environment (no index here), the package from the
    # wheel alone: a path entry, not a site directory, so this checkout's editable install
    # is not seen.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], capture_output=True,
                             text=True, check=True, timeout=60).stdout.strip()
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "VTORQUE_CONFIG": "/nonexistent.yaml"}
    where = subprocess.run([str(python), "-c", "import vtorque; print(vtorque.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    for command, expected in (("vtorque", "status"), ("vsub", "-vm")):
        done = subprocess.run([str(venv / "bin" / command), "--help"], capture_output=True,
                              text=True, env=env, cwd=tmp_path, timeout=60)
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr
    share = venv / "share"
    assert os.access(share / "vtorque/contrib/slurm/install", os.X_OK)
    assert (share / "man/man1/vtorque.1").read_text().startswith(".TH VTORQUE 1")
    assert (share / "vtorque/conf/vtorque.yaml").read_text() == \
        (ROOT / "conf/vtorque.yaml").read_text()


def test_the_reaper_units_run_reap_at_boot_and_periodically() -> None:
    service = configparser.ConfigParser(interpolation=None, strict=False)
    service.read(ROOT / "contrib/systemd/vtorque-reap.service")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("/vtorque reap")
    assert "metrics --write" in service["Service"]["ExecStartPost"]
    timer = configparser.ConfigParser(interpolation=None)
    timer.read(ROOT / "contrib/systemd/vtorque-reap.timer")
    assert timer["Timer"]["OnBootSec"] and timer["Timer"]["OnUnitActiveSec"] == "10min"
    assert timer["Install"]["WantedBy"] == "timers.target"
    lines = [ln for ln in (ROOT / "contrib/cron/vtorque").read_text().splitlines()
             if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert [ln.split()[0] for ln in lines] == ["@reboot", "*/10"]
    assert all(" root " in ln and "vtorque reap" in ln for ln in lines)


def test_logrotate_rotates_the_default_node_log() -> None:
    text = (ROOT / "contrib/logrotate/vtorque").read_text()
    assert f"{schema.SCHEMA['log_file'].default} {{" in text
    rules = [ln.strip() for ln in text.splitlines() if ln.startswith("    ")]
    assert "create 0640 root root" in rules and "copytruncate" not in rules
