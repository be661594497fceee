"""What only Torque's hooks do (vtorque/hooks/torque.py and `python -m vtorque.hooks`):
its arguments, its events, epilogue.precancel. The contract all three schedulers share is
in test_hook_contract.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.standins import calls, install
from vtorque import hooks

JOB = "17.head"
TORQUE_JOB = {
    "Job_Name": "vmjob", "Job_Owner": "alice@login1", "euser": "alice", "egroup": "hpc",
    "job_state": "R", "queue": "batch", "exec_host": "n1/0-1+n2/0-1", "start_count": "1",
    "Resource_List": {"nodes": "2:ppn=2", "walltime": "01:00:00"},
    "Variable_List": {"PBS_O_WORKDIR": "/home/alice/run", "VTORQUE_VM": "vcpus=1"},
}
ARGS = [JOB, "alice", "hpc", "vmjob", "nodes=2:ppn=2", "", "batch", "", "/home/alice"]


def job(vm: str | None = "vcpus=1", **fields: Any) -> dict[str, Any]:
    variables = {"PBS_O_WORKDIR": "/home/alice/run"}
    if vm is not None:
        variables["VTORQUE_VM"] = vm
    return dict(TORQUE_JOB, Variable_List=variables, **fields)


class Site:
    """A config file, the stand-in Torque commands and their DB, all in tmp_path."""

    def __init__(self, tmp: Path, config_data: dict[str, Any]):
        self.tmp = tmp
        self.bin_dir = tmp / "torque-bin"
        self.data = dict(config_data, node_name="n1", log_file=str(tmp / "log" / "vt.log"),
                         batch={"system": "torque", "bin_dir": str(self.bin_dir),
                                "shared_state_dir": str(tmp / "shared")})
        self.config = tmp / "vtorque.yaml"
        self.write_config()
        self.db = install("torque", self.bin_dir, jobs={})

    def write_config(self, **overrides: Any) -> None:
        data = dict(self.data)
        for key, value in overrides.items():
            data[key] = dict(data.get(key, {}), **value) if isinstance(value, dict) else value
        self.config.write_text(yaml.safe_dump(data))

    def jobs(self, jobs: dict[str, Any], **extra: Any) -> None:
        self.db = install("torque", self.bin_dir, jobs=jobs, **extra)

    def hook(self, event: str, *args: str, config: str | None = None) -> int:
        return hooks.main("torque", event, list(args),
                          str(self.config) if config is None else config)

    def progs(self) -> list[list[str]]:
        return [c["argv"] for c in calls(self.db)]


@pytest.fixture
def site(tmp_path: Path, config_data: dict[str, Any]) -> Site:
    return Site(tmp_path, config_data)


def test_short_job_id_is_completed_by_the_server(site: Site, no_libvirt: None) -> None:
    site.jobs({JOB: job(vm=None)})
    assert site.hook("prologue", "17", "alice") == 0


# Without a config the mother superior aborts (the real server would requeue a failing
# prologue forever) and a sister reports nothing (the mother superior's wait times out):
# the real server retries a failing prologue.parallel forever and marks the node down.
@pytest.mark.parametrize("event,status", [("prologue", 1), ("prologue.parallel", 0),
                                          ("epilogue", 1), ("epilogue.parallel", 1)])


def test_missing_config(site: Site, no_libvirt: None, event: str, status: int,
                        capsys: pytest.CaptureFixture) -> None:
    missing = str(site.tmp / "nope.yaml")
    assert site.hook(event, *ARGS, config=missing) == status
    err = capsys.readouterr().err
    assert missing in err and "file not found" in err


def test_precancel_needs_nothing(site: Site, no_libvirt: None,
                                 capsys: pytest.CaptureFixture) -> None:
    assert site.hook("epilogue.precancel", *ARGS, config=str(site.tmp / "nope.yaml")) == 0
    assert site.hook("epilogue.precancel", config=str(site.tmp / "nope.yaml")) == 0
    assert capsys.readouterr().err == ""
    assert site.progs() == []


@pytest.mark.parametrize("event", ["prologue", "x", "epilogue"])


def test_no_job_id(site: Site, event: str, capsys: pytest.CaptureFixture) -> None:
    expected = {"prologue": 1, "x": 1, "epilogue": 1}[event]
    assert site.hook(event) == expected
    assert capsys.readouterr().err.startswith("vtorque: ")


@pytest.mark.parametrize("event,status", [("prologue.bogus", 1), ("epilogue.bogus", 1),
                                          ("queuejob", 1)])


def test_unknown_event(site: Site, event: str, status: int,
                       capsys: pytest.CaptureFixture) -> None:
    assert site.hook(event, *ARGS) == status
    assert "unknown torque hook event" in capsys.readouterr().err


def test_unknown_scheduler(site: Site, capsys: pytest.CaptureFixture) -> None:
    assert hooks.main("lsf", "prologue", ARGS, str(site.config)) == 2
    assert "'lsf'" in capsys.readouterr().err


def test_module_usage_error() -> None:
    for argv in ([], ["torque"], ["--config", "/x"], ["--config", "/x", "torque"]):
        done = subprocess.run([sys.executable, "-m", "vtorque.hooks", *argv],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, argv
        assert done.stderr.startswith("usage: python -m vtorque.hooks"), done.stderr
        assert done.stdout == ""


def test_module_runs_a_hook(site: Site) -> None:
    done = subprocess.run([sys.executable, "-m", "vtorque.hooks", "--config",
                           str(site.tmp / "nope.yaml"), "torque", "epilogue.precancel", JOB],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/bin"})
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "vtorque.hooks", "--config",
                           str(site.tmp / "nope.yaml"), "torque", "prologue", JOB],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/bin"})
    assert done.returncode == 1 and "file not found" in done.stderr



def broken(site: Site, *names: str) -> None:
    """The node's batch commands fail as they do when they cannot reach the server."""
    for name in names:
        path = site.bin_dir / name
        path.unlink()
        path.write_text(f"#!/bin/sh\necho '{name}: cannot connect to server head' >&2\n"
                        "exit 1\n")
        path.chmod(0o755)


@pytest.mark.parametrize("offline_works, status", [(True, 2), (False, 1)])
def test_a_job_that_cannot_be_read_is_never_requeued_without_bound(
        site: Site, no_libvirt: None, capsys: pytest.CaptureFixture,
        offline_works: bool, status: int) -> None:
    """The mother superior cannot read the job (its starts cannot be counted): with this
    node taken offline the server starts it elsewhere (2, requeue); when the node cannot
    be taken offline either, the real server would start it here again at once, without
    end (about twice a second): abort (1)."""
    site.jobs({JOB: job()})
    broken(site, "qstat", *(() if offline_works else ("pbsnodes",)))
    assert site.hook("prologue", *ARGS) == status
    err = capsys.readouterr().err
    assert "cannot read job" in err
    assert ("aborted rather than requeued" in err) == (not offline_works)
