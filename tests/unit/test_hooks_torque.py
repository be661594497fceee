"""Unit tests of vtorque.hooks' Torque dispatch: Torque's hook contract (arguments, exit
statuses, one line on stderr) against the stand-in qstat and pbsnodes (tests/standins),
with no guests ever started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.standins import calls, install
from vtorque import hooks
from vtorque.journal import JobPaths
from vtorque.prologue import handoff

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


@pytest.mark.parametrize("event", ["prologue", "prologue.parallel"])
def test_job_without_vms_runs(site: Site, no_libvirt: None, event: str,
                              capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: job(vm=None)})
    assert site.hook(event, *ARGS) == 0
    assert site.progs() == [["qstat", "-f", "-x", JOB]]
    assert capsys.readouterr().err == ""
    assert not os.path.exists(site.tmp / "shared")


def test_short_job_id_is_completed_by_the_server(site: Site, no_libvirt: None) -> None:
    site.jobs({JOB: job(vm=None)})
    assert site.hook("prologue", "17", "alice") == 0


@pytest.mark.parametrize("event", ["prologue", "prologue.parallel"])
def test_unknown_job_requeues(site: Site, no_libvirt: None, event: str,
                              capsys: pytest.CaptureFixture) -> None:
    site.jobs({})
    assert site.hook(event, *ARGS) == 2
    err = capsys.readouterr().err
    assert f"cannot read job {JOB}" in err and "unknown to the batch server" in err


def test_unreachable_server_requeues(site: Site, no_libvirt: None,
                                     capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: job()}, fail={"qstat": {"exit": 1, "stderr":
                                            "qstat: cannot connect to server head\n"}})
    assert site.hook("prologue", *ARGS) == 2
    assert "cannot connect to server head" in capsys.readouterr().err


@pytest.mark.parametrize("event,status", [("prologue", 2), ("prologue.parallel", 2),
                                          ("epilogue", 1), ("epilogue.parallel", 1)])
def test_broken_config(site: Site, no_libvirt: None, event: str, status: int,
                       capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: job()})
    site.write_config(limits={"vcpus": 0})
    assert site.hook(event, *ARGS) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "limits.vcpus" in err and str(site.config) in err
    assert site.progs() == []                   # nothing asked before the config is valid


@pytest.mark.parametrize("event,status", [("prologue", 2), ("epilogue", 1)])
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


def test_owner_mismatch_aborts(site: Site, no_libvirt: None,
                               capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: job()})
    assert site.hook("prologue", JOB, "mallory", "hpc") == 1
    err = capsys.readouterr().err
    assert "'mallory'" in err and "'alice'" in err and "refusing" in err
    assert not os.path.exists(site.tmp / "shared")


def test_invalid_request_aborts_naming_the_key(site: Site, no_libvirt: None,
                                               capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: job(vm="vcpus=0")})
    assert site.hook("prologue.parallel", *ARGS) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "vcpus" in err
    status = handoff.read(site_config(site), JOB, "n1")
    assert status.state == handoff.FAILED and status.user_fault


def site_config(site: Site) -> Any:
    from vtorque import config as config_mod
    return config_mod.load(str(site.config))


@pytest.mark.parametrize("event", ["prologue", "x", "epilogue"])
def test_no_job_id(site: Site, event: str, capsys: pytest.CaptureFixture) -> None:
    expected = {"prologue": 2, "x": 1, "epilogue": 1}[event]
    assert site.hook(event) == expected
    assert capsys.readouterr().err.startswith("vtorque: ")


@pytest.mark.parametrize("event,status", [("prologue.bogus", 2), ("epilogue.bogus", 1),
                                          ("queuejob", 1)])
def test_unknown_event(site: Site, event: str, status: int,
                       capsys: pytest.CaptureFixture) -> None:
    assert site.hook(event, *ARGS) == status
    assert "unknown Torque hook event" in capsys.readouterr().err


def test_unknown_scheduler(site: Site, capsys: pytest.CaptureFixture) -> None:
    assert hooks.main("lsf", "prologue", ARGS, str(site.config)) == 2
    assert "'lsf'" in capsys.readouterr().err


def test_node_faults_beyond_max_requeues_abort(site: Site, pool_dir: Path,
                                               add_kernel_image: Any,
                                               capsys: pytest.CaptureFixture) -> None:
    """The request is fine, the image authorized, but libvirt cannot be reached: a node
    fault, and the job has been started more often than batch.max_requeues allows."""
    add_kernel_image(pool_dir)
    secret = site.tmp / "secret"
    secret.write_bytes(os.urandom(32))
    os.chmod(secret, 0o600)
    site.write_config(libvirt_uri="qemu:///system?socket=/nonexistent/libvirt-sock",
                      secret_file=str(secret), min_free_space="1M",
                      batch={"max_requeues": 1})
    site.jobs({JOB: job(vm="img=testguest;ram=64M", start_count="2")})
    assert site.hook("prologue", *ARGS) == 1
    err = capsys.readouterr().err
    assert "aborting" in err and "batch.max_requeues=1" in err
    assert "cannot connect to libvirt at qemu:///system?socket=/nonexistent" in err, err
    cfg = site_config(site)
    status = handoff.read(cfg, JOB, "n1")
    assert status.state == handoff.FAILED and not status.user_fault
    # Nothing of the job is left on the node.
    paths = JobPaths.for_job(JOB, cfg.state_dir, cfg.ramdisk_dir)
    assert not os.path.lexists(paths.job_dir) and not os.path.lexists(paths.lock)


def test_node_fault_within_max_requeues_requeues(site: Site, no_libvirt: None,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    from vtorque.errors import HypervisorError
    from vtorque.prologue import guests

    def fail(*args: Any, **kwargs: Any) -> None:
        raise HypervisorError("cannot connect to libvirt")
    monkeypatch.setattr(guests, "bring_up", fail)
    site.jobs({JOB: job(start_count="1")})
    assert site.hook("prologue.parallel", *ARGS) == 2
    assert "cannot connect to libvirt" in capsys.readouterr().err


def test_unexpected_exception_requeues(site: Site, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    from vtorque.prologue import guests

    def bug(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("bug")
    monkeypatch.setattr(guests, "bring_up", bug)
    site.jobs({JOB: job()})
    assert site.hook("prologue", *ARGS) == 2
    assert "internal error in the prologue hook" in capsys.readouterr().err


@pytest.mark.parametrize("event", ["epilogue", "epilogue.parallel"])
def test_epilogue_without_local_state(site: Site, no_libvirt: None, event: str,
                                      capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: job()})
    assert site.hook(event, *ARGS, "0") == 0
    assert capsys.readouterr().err == ""
    assert site.progs() == []                      # not even the server is asked


def test_failed_teardown_takes_the_node_offline(site: Site, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    from vtorque.errors import TeardownError
    from vtorque.vm import lifecycle

    def down(job_id: str, config: Any) -> list[str]:
        raise TeardownError(job_id, ["guest vtorque-x-0 still exists after destroy"])
    monkeypatch.setattr(lifecycle, "down", down)
    cfg = site_config(site)
    os.makedirs(JobPaths.for_job(JOB, cfg.state_dir, cfg.ramdisk_dir).job_dir)
    assert site.hook("epilogue.parallel", *ARGS, "0") == 1
    assert "still exists after destroy" in capsys.readouterr().err
    offline = [argv for argv in site.progs() if argv[0] == "pbsnodes"]
    assert len(offline) == 1
    assert offline[0][:3] == ["pbsnodes", "-o", "-N"] and offline[0][-1] == "n1"
    assert offline[0][3].startswith(f"vtorque: job {JOB} teardown incomplete")


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
    assert done.returncode == 2 and "file not found" in done.stderr
