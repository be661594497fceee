"""contrib/torque_hooks: the shipped shims match their template, install keeps the site's
own scripts and runs them (never exec-ing into them), uninstall restores them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOOKS = REPO / "contrib" / "torque_hooks"
EVENTS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel",
          "epilogue.precancel")
DEFAULTS = {"@SITE_DIR@": "/var/spool/torque/mom_priv/vtorque-site",
            "@PYTHON@": "/opt/vtorque/.venv/bin/python",
            "@CONFIG@": "/etc/vtorque/vtorque.yaml", "@QSTAT@": "/usr/bin/qstat"}


@pytest.mark.parametrize("event", EVENTS)
def test_shipped_shims_are_the_template_rendered(event):
    text = (HOOKS / "shim.in").read_text().replace("@EVENT@", event)
    for key, value in DEFAULTS.items():
        text = text.replace(key, value)
    assert (HOOKS / event).read_text() == text


def install(mom_priv: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(HOOKS / "install"), "--mom-priv", str(mom_priv),
                           "--python", sys.executable, "--config", str(tmp_path / "c.yaml"),
                           "--job-shell", str(tmp_path / "bin" / "job-shell"), *extra],
                          capture_output=True, text=True, timeout=60)


def test_install_keeps_and_runs_site_scripts(tmp_path):
    mom_priv = tmp_path / "mom_priv"
    mom_priv.mkdir()
    marker = tmp_path / "site-ran"
    site = mom_priv / "prologue"
    site.write_text(f"#!/bin/sh\necho \"$@\" > {marker}\nexit 1\n")
    site.chmod(0o700)
    done = install(mom_priv, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exit 1" in (mom_priv / "vtorque-site" / "prologue").read_text()
    shim = (mom_priv / "prologue").read_text()
    assert "vtorque shim for Torque" in shim and "exec \"$site\"" not in shim
    assert (mom_priv / "prologue").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "job-shell").exists()
    # The site's prologue refuses the job: the shim passes its status on, and the site
    # script saw Torque's arguments.
    run = subprocess.run([str(mom_priv / "prologue"), "12.srv", "alice", "users"],
                         capture_output=True, text=True, timeout=60, env={})
    assert run.returncode == 1
    assert marker.read_text().split() == ["12.srv", "alice", "users"]
    # Installing twice keeps the site script where it is and does not wrap the shim.
    again = install(mom_priv, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "exit 1" in (mom_priv / "vtorque-site" / "prologue").read_text()
    # Uninstall puts the site's script back.
    gone = install(mom_priv, tmp_path, "--uninstall")
    assert gone.returncode == 0, gone.stderr
    assert "exit 1" in (mom_priv / "prologue").read_text()
    assert not (mom_priv / "epilogue").exists()
    assert not (tmp_path / "bin" / "job-shell").exists()


def test_precancel_shim_does_nothing_but_succeed(tmp_path):
    mom_priv = tmp_path / "mom_priv"
    mom_priv.mkdir()
    assert install(mom_priv, tmp_path).returncode == 0
    run = subprocess.run([str(mom_priv / "epilogue.precancel"), "12.srv", "alice"],
                         capture_output=True, text=True, timeout=60, env={})
    assert (run.returncode, run.stderr) == (0, "")
