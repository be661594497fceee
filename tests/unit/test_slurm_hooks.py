"""Slurm hooks without a running Slurm.

1. What only Slurm's hooks do (vtorque/hooks/slurm.py) against the Slurm stand-ins
   (tests/standins/slurm): AdminComment, scancel, drain reasons, requeuehold from the
   mother superior for another node's fault, --no-requeue jobs, the limit without a
   drain. The contract all three schedulers share is in test_hook_contract.py. No guest
   is ever booted.
2. contrib/slurm/prolog and epilog: the fast paths, the arguments and the clean
   environment they pass (a fake python records them), and install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.standins import calls, install, read_db
from vtorque import hooks
from vtorque.hooks import slurm as slurm_hooks
from vtorque.errors import NodeError

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "slurm"
JOB = "42"
VM_JOB = {"JobName": "vmjob", "UserId": "alice(1001)", "GroupId": "hpc(100)",
          "JobState": "RUNNING", "Reason": "Prolog", "Partition": "batch",
          "NodeList": "n[1-2]", "NumCPUs": 8, "CPU_IDs": {"n1": "0-3", "n2": "0-3"},
          "Comment": "vtorque:vcpus=2", "WorkDir": "/home/alice/run"}


class Site:
    def __init__(self, tmp: Path, config_data: dict[str, Any]):
        self.tmp = tmp
        self.bin_dir = tmp / "slurm-bin"
        self.data = dict(config_data, log_file=str(tmp / "log" / "vt.log"),
                         batch={"system": "slurm", "bin_dir": str(self.bin_dir),
                                "shared_state_dir": str(tmp / "shared"),
                                "job_shell": str(tmp / "job-shell")})
        self.config = tmp / "vtorque.yaml"
        self.write_config()
        self.db = self.jobs({})

    def write_config(self, **overrides: Any) -> None:
        data = dict(self.data)
        for key, value in overrides.items():
            data[key] = dict(data.get(key, {}), **value) if isinstance(value, dict) else value
        self.config.write_text(yaml.safe_dump(data))

    def jobs(self, jobs: dict[str, Any], **extra: Any) -> Path:
        self.db = install("slurm", self.bin_dir, jobs=jobs, **extra)
        return self.db

    def env(self, node: str = "n1", **extra: str) -> dict[str, str]:
        return {"SLURM_JOB_ID": JOB, "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": "1001",
                "SLURMD_NODENAME": node, "SLURM_NODELIST": "n[1-2]", **extra}

    def main(self, event: str, node: str = "n1", args: tuple[str, ...] = (),
             **env: str) -> int:
        return hooks.main("slurm", event, list(args), str(self.config),
                          environ=self.env(node, **env))

    def argvs(self, prog: str | None = None) -> list[list[str]]:
        return [c["argv"] for c in calls(self.db) if prog is None or c["prog"] == prog]

    def job(self) -> dict[str, Any]:
        return read_db(self.db)["jobs"][JOB]

    def nodes(self) -> dict[str, Any]:
        return read_db(self.db)["nodes"]


@pytest.fixture
def site(tmp_path: Path, config_data: dict[str, Any]) -> Site:
    return Site(tmp_path, config_data)


def fake_bring_up(monkeypatch: pytest.MonkeyPatch, error: Exception | None = None) -> list:
    """guests.bring_up as a recorder: succeeds with one fake guest, or raises `error`."""
    from vtorque.prologue import guests
    seen: list = []

    def bring_up(job_id, request, config, *, user, node_index=0, node_count=1, node=None,
                 run=0, workdir=None, keys=None, job_cores=None):
        seen.append((job_id, user, node_index, node_count))
        if error is not None:
            raise error
        guest = SimpleNamespace(rank=node_index, name=f"vt-{job_id}-{node_index}",
                                hostname=f"vm{node_index}", mac="52:54:00:00:00:01",
                                address=None, ready_seconds=0.5, started="boot")
        return SimpleNamespace(guests=[guest], seconds=0.1, restored=0, image_kind="kernel",
                               image_name="testguest", image_digest="0" * 64,
                               rdma=None), []
    monkeypatch.setattr(guests, "bring_up", bring_up)
    monkeypatch.setattr(guests, "write_user_files", lambda *a, **k: "/tmp/unused")
    return seen


def publish_sister(site: Site, node: str = "n2", ok: bool = True,
                   reason: str = "libvirtd is down", user_fault: bool = False) -> None:
    from vtorque import config as config_mod
    from vtorque.cluster import handoff
    cfg = config_mod.load(str(site.config))
    status = handoff.NodeStatus(node, handoff.READY, run=1) if ok else handoff.NodeStatus(
        node, handoff.FAILED, reason, user_fault=user_fault, run=1)
    handoff.publish(cfg, JOB, status)


# --- 1. main() ----------------------------------------------------------------------------



@pytest.mark.parametrize("request_text", ["vcpus=100000", "img=../../etc/passwd",
                                          "bogus=1", "ram=1T"])
def test_invalid_request_cancels_the_job_and_keeps_the_node(
        site: Site, no_libvirt: None, request_text: str,
        capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: dict(VM_JOB, Comment=f"vtorque:{request_text}")})
    assert site.main("prolog") == 0
    job = site.job()
    assert job["JobState"] == "CANCELLED"
    assert job["AdminComment"].startswith(f"vtorque: job {JOB} refused: ")
    assert "node n1 stays in service" in job["AdminComment"]
    assert site.nodes() == {}                                    # nobody drained
    assert ["scancel", "-Q", JOB] in site.argvs()
    assert not any("nodename=" in " ".join(a) for a in site.argvs())
    assert "refused" in capsys.readouterr().err



def test_ambiguous_record_is_a_user_error(site: Site, no_libvirt: None) -> None:
    site.jobs({JOB: dict(VM_JOB, JobName="x\n   UserId=root(0)")})
    assert site.main("prolog") == 0
    assert site.job()["JobState"] == "CANCELLED"
    assert "ambiguous" in site.job()["AdminComment"] and site.nodes() == {}



def test_node_fault_drains_this_node_and_fails_the_prolog(site: Site,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture
                                                          ) -> None:
    seen = fake_bring_up(monkeypatch, NodeError("libvirtd is down"))
    site.jobs({JOB: VM_JOB})
    assert site.main("prolog", node="n2") == 1
    assert seen == [(JOB, "alice", 1, 2)]                       # n2 is node index 1
    node = site.nodes()["n2"]
    assert node["state"] == "drain"
    assert node["reason"] == ("vtorque: node n2 failed to start the job's guests: libvirtd "
                              "is down")
    job = site.job()
    assert job["JobState"] == "RUNNING"                          # Slurm requeues it
    assert "node n2 drained, job requeued held" in job["AdminComment"]
    assert "libvirtd is down" in capsys.readouterr().err


@pytest.mark.parametrize("restarts, status, state", [(2, 1, "RUNNING"),
                                                     (3, 0, "CANCELLED")])
def test_node_faults_past_max_requeues_cancel_but_still_drain(
        site: Site, monkeypatch: pytest.MonkeyPatch, restarts: int, status: int,
        state: str) -> None:
    fake_bring_up(monkeypatch, NodeError("disk full"))
    site.jobs({JOB: dict(VM_JOB, Restarts=restarts)})          # started restarts + 1 times
    assert site.main("prolog", node="n2") == status
    assert site.nodes()["n2"]["state"] == "drain"
    assert site.job()["JobState"] == state
    if state == "CANCELLED":
        assert "limit batch.max_requeues=3" in site.job()["AdminComment"]


def test_past_the_limit_without_a_drain_fails_the_prolog(site: Site,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """If the node cannot be drained, Slurm must do it: exit 1 (the job is requeued
    held rather than a broken node left in service)."""
    fake_bring_up(monkeypatch, NodeError("disk full"))
    site.jobs({JOB: dict(VM_JOB, Restarts=5)})
    # scontrol reads jobs as the stand-in does, but every `update` is refused.
    real = site.bin_dir / "scontrol-real"
    real.symlink_to(ROOT / "tests" / "standins" / "slurm" / "scontrol")
    (site.bin_dir / "scontrol").unlink()
    wrapper = site.bin_dir / "scontrol"
    wrapper.write_text("#!/bin/sh\ncase \"$1\" in update) echo 'scontrol: error: Access/"
                       "permission denied' >&2; exit 1 ;; esac\n"
                       f"exec {real} \"$@\"\n")
    wrapper.chmod(0o755)
    assert site.main("prolog", node="n2") == 1
    assert site.job()["JobState"] == "RUNNING"                  # not cancelled


def test_node_not_among_the_jobs_nodes_is_a_node_fault(site: Site, no_libvirt: None) -> None:
    site.jobs({JOB: VM_JOB})
    assert site.main("prolog", node="n9") == 1
    assert site.nodes()["n9"]["state"] == "drain"
    assert "not among the job's nodes" in site.nodes()["n9"]["reason"]


def test_mother_superior_runs_the_job_once_every_node_is_ready(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fake_bring_up(monkeypatch)
    site.jobs({JOB: VM_JOB})
    publish_sister(site, ok=True)
    assert site.main("prolog", node="n1") == 0
    assert seen == [(JOB, "alice", 0, 2)]
    # Read the job, then record what it runs on in its AdminComment (sacct shows it).
    assert site.argvs() == [["scontrol", "show", "job", "-dd", JOB],
                            ["scontrol", "update", f"jobid={JOB}",
                             "admincomment=vtorque: image=testguest sha256=" + "0" * 64
                             + " boot=0.5s nodes=2"]]


def test_another_nodes_fault_requeues_held_without_draining_this_node(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another node's fault (Outcome.fault other-nodes) is not this node's."""
    fake_bring_up(monkeypatch)
    site.jobs({JOB: VM_JOB})
    publish_sister(site, ok=False, reason="libvirtd is down")
    assert site.main("prolog", node="n1") == 0
    assert site.nodes() == {}
    job = site.job()
    assert (job["JobState"], job["Reason"]) == ("PENDING", "job_requeued_in_held_state")
    assert "n2: libvirtd is down" in job["AdminComment"]
    assert ["scontrol", "requeuehold", "Incomplete", JOB] in site.argvs()


def test_another_nodes_fault_cancels_a_job_that_cannot_be_requeued(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bring_up(monkeypatch)
    site.jobs({JOB: dict(VM_JOB, Requeue=0)})
    publish_sister(site, ok=False)
    assert site.main("prolog", node="n1") == 0
    assert site.job()["JobState"] == "CANCELLED" and site.nodes() == {}
    assert "cannot be requeued" in site.job()["AdminComment"]


def test_another_nodes_user_error_cancels(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bring_up(monkeypatch)
    site.jobs({JOB: VM_JOB})
    publish_sister(site, ok=False, reason="image gone", user_fault=True)
    assert site.main("prolog", node="n1") == 0
    assert site.job()["JobState"] == "CANCELLED" and site.nodes() == {}



def test_unreadable_job_is_a_node_fault(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_hooks, "READ_RETRY_SECONDS", 0.0)
    site.jobs({}, fail={"scontrol": {"exit": 1, "stderr": "slurm_load_jobs error: Unable "
                                                          "to contact slurm controller\n"}})
    assert site.main("prolog") == 1
    assert len(site.argvs("scontrol")) >= 3                     # read, retry, drain attempt


def test_setup_problems_fail_the_prolog(site: Site, capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: VM_JOB})
    assert site.main("prolog", SLURM_JOB_ID="") == 1
    assert site.main("prolog", SLURM_JOB_ID="-rf") == 1
    assert site.main("prolog", args=("42",)) == 1
    assert site.main("bogus") == 1
    assert site.main("prolog", node="bad/name") == 1
    site.write_config(batch={"system": "torque"})
    assert site.main("prolog") == 1
    assert "sets batch.system: torque" in capsys.readouterr().err
    site.config.write_text("limits: {vcpus: many}\n")
    assert site.main("prolog") == 1
    assert site.main("epilog") == 1



def test_failed_teardown_drains_the_node(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtorque import config as config_mod
    from vtorque.errors import TeardownError
    from vtorque.journal import JobPaths
    from vtorque.vm import lifecycle

    def down(job_id, cfg):
        raise TeardownError(job_id, ["domain vt-42-0 still running"])
    monkeypatch.setattr(lifecycle, "down", down)
    site.jobs({JOB: VM_JOB})
    cfg = config_mod.load(str(site.config))
    os.makedirs(JobPaths.for_job(JOB, cfg.state_dir, cfg.ramdisk_dir).job_dir)
    assert site.main("epilog", node="n2") == 1
    node = site.nodes()["n2"]
    assert node["state"] == "drain" and "teardown incomplete" in node["reason"]


# --- 2. the shims and install ---------------------------------------------------------------

FAKE = """\
#!{python}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}) + "\\n")
sys.exit(int(open({status!r}).read() or 0))
"""


class Fake:
    """An executable standing in for the python the shims run."""

    def __init__(self, tmp: Path):
        self.path = tmp / "fake-python"
        self.record = tmp / "fake-calls.jsonl"
        self.status = tmp / "fake-status"
        self.status.write_text("0")
        self.path.write_text(FAKE.format(python=sys.executable, record=str(self.record),
                                         status=str(self.status)))
        self.path.chmod(0o755)

    def calls(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


def render(event: str, python: str, config: str, scontrol: str) -> str:
    """The shim as install renders it (its three line substitutions)."""
    out = []
    for line in (CONTRIB / event).read_text().splitlines(keepends=True):
        if line.startswith("PYTHON="):
            line = f"PYTHON={python}\n"
        elif line.startswith("CONFIG="):
            line = f"CONFIG={config}\n"
        elif line.startswith("SCONTROL="):
            line = f"SCONTROL={scontrol}\n"
        out.append(line)
    return "".join(out)


@pytest.fixture
def shims(tmp_path: Path):
    fake = Fake(tmp_path)
    bin_dir = tmp_path / "slurm-bin"
    db = install("slurm", bin_dir, jobs={})
    out = {}
    for event in ("prolog", "epilog"):
        path = tmp_path / event
        path.write_text(render(event, str(fake.path), "/etc/vtorque/test.yaml",
                               str(bin_dir / "scontrol")))
        path.chmod(0o755)
        out[event] = path
    return SimpleNamespace(fake=fake, db=db, bin_dir=bin_dir, **out)


SLURMD_ENV = {"SLURM_JOB_ID": JOB, "SLURM_JOB_USER": "alice", "SLURM_JOB_UID": "1001",
              "SLURMD_NODENAME": "n1", "SLURM_NODELIST": "n[1-2]",
              "SLURM_SCRIPT_CONTEXT": "prolog_slurmd", "SLURM_CONF": "/etc/slurm/slurm.conf",
              "LD_PRELOAD": "/evil.so", "PYTHONPATH": "/evil", "PATH": "/evil/bin",
              "SPANK_X": "user-set"}


def run_shim(path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(path)], env=env, capture_output=True, text=True, timeout=60)


def test_shipped_shims_are_valid_sh() -> None:
    for event in ("prolog", "epilog"):
        assert subprocess.run(["sh", "-n", str(CONTRIB / event)], timeout=30).returncode == 0
        assert os.access(CONTRIB / event, os.X_OK)


def test_prolog_env_fast_path_needs_neither_slurm_nor_python(shims) -> None:
    env = dict(SLURMD_ENV, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_COMMENT="my comment")
    assert run_shim(shims.prolog, **env).returncode == 0
    env.pop("SLURM_JOB_COMMENT")                        # no comment at all
    assert run_shim(shims.prolog, **env).returncode == 0
    assert shims.fake.calls() == [] and calls(shims.db) == []


def test_prolog_marker_in_the_credential_goes_to_vtorque_with_a_clean_env(shims) -> None:
    env = dict(SLURMD_ENV, SLURM_JOB_RESTART_COUNT="1",
               SLURM_JOB_COMMENT="vtorque:img=deb12 x")
    shims.fake.status.write_text("1")
    done = run_shim(shims.prolog, **env)
    assert done.returncode == 1                          # vtorque's status is the Prolog's
    (call,) = shims.fake.calls()
    assert call["argv"] == ["-E", "-s", "-m", "vtorque.hooks", "--config",
                            "/etc/vtorque/test.yaml", "slurm", "prolog"]
    assert call["env"] == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                           "SLURM_JOB_ID": JOB, "SLURM_JOB_USER": "alice",
                           "SLURMD_NODENAME": "n1", "SLURM_CONF": "/etc/slurm/slurm.conf",
                           "SLURM_NODELIST": "n[1-2]"}
    assert calls(shims.db) == []


def test_prolog_scontrol_fast_path_without_the_credential_block(shims) -> None:
    install("slurm", shims.bin_dir, jobs={JOB: dict(VM_JOB, Comment="")})
    assert run_shim(shims.prolog, **SLURMD_ENV).returncode == 0
    assert shims.fake.calls() == []
    assert [c["argv"] for c in calls(shims.db)] == [["scontrol", "show", "job", JOB]]
    install("slurm", shims.bin_dir, jobs={JOB: VM_JOB})
    assert run_shim(shims.prolog, **SLURMD_ENV).returncode == 0
    assert len(shims.fake.calls()) == 1                  # the marker: vtorque decides


@pytest.mark.parametrize("fail", [{"exit": 1, "stderr": "slurm_load_jobs error\n"},
                                  {"exit": 0, "stdout": ""}])
def test_prolog_scontrol_trouble_goes_to_vtorque(shims, fail: dict) -> None:
    install("slurm", shims.bin_dir, jobs={JOB: VM_JOB}, fail={"scontrol": fail})
    run_shim(shims.prolog, **SLURMD_ENV)
    assert len(shims.fake.calls()) == 1


@pytest.mark.parametrize("job_id", ["", "12a", "-1", "1 2", "$(id)"])
def test_shims_refuse_a_strange_job_id(shims, job_id: str) -> None:
    for shim in (shims.prolog, shims.epilog):
        assert run_shim(shim, **dict(SLURMD_ENV, SLURM_JOB_ID=job_id)).returncode == 1
    assert shims.fake.calls() == []


def test_epilog_always_goes_to_vtorque(shims) -> None:
    env = dict(SLURMD_ENV, SLURM_JOB_RESTART_COUNT="0", SLURM_JOB_COMMENT="x",
               SLURM_SCRIPT_CONTEXT="epilog_slurmd")
    assert run_shim(shims.epilog, **env).returncode == 0
    (call,) = shims.fake.calls()
    assert call["argv"][-2:] == ["slurm", "epilog"]
    assert "LD_PRELOAD" not in call["env"] and "SLURM_JOB_COMMENT" not in call["env"]


def _install(tmp_path: Path, *extra: str, config: Path | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONTRIB / "install"), "--dir", str(tmp_path / "etc"),
                           "--python", sys.executable,
                           "--config", str(config or tmp_path / "c.yaml"),
                           "--job-shell", str(tmp_path / "bin" / "job-shell"), *extra],
                          capture_output=True, text=True, timeout=120)


def test_install_renders_the_shims_and_prints_the_slurm_conf_lines(
        tmp_path: Path, config_data: dict[str, Any]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(dict(config_data, timeouts={"provision": 100},
                                          batch={"bin_dir": "/opt/slurm/bin"})))
    done = _install(tmp_path, config=config)
    assert done.returncode == 0, done.stderr
    for event in ("prolog", "epilog"):
        text = (tmp_path / "etc" / event).read_text()
        expected = render(event, sys.executable, str(config), "/opt/slurm/bin/scontrol")
        assert text == expected
        assert (tmp_path / "etc" / event).stat().st_mode & 0o777 == 0o755
    shell = (tmp_path / "bin" / "job-shell").read_text()
    assert "vtorque job shell" in shell and sys.executable in shell
    for line in (f"Prolog={tmp_path}/etc/prolog", f"Epilog={tmp_path}/etc/epilog",
                 "PrologFlags=Alloc,DeferBatch", "PrologEpilogTimeout=160",
                 "JobRequeue=1"):
        assert f"\n  {line}\n" in done.stdout
    again = _install(tmp_path, config=config)
    assert again.returncode == 0
    gone = _install(tmp_path, "--uninstall")
    assert gone.returncode == 0 and not (tmp_path / "etc").exists()
    assert not (tmp_path / "bin" / "job-shell").exists()


@pytest.mark.parametrize("option, value", [("--config", "relative.yaml"),
                                           ("--python", "/opt/my python"),
                                           ("--dir", "/etc/slurm/$(id)")])
def test_install_refuses_paths_it_cannot_write_safely(tmp_path: Path, option: str,
                                                      value: str) -> None:
    args = {"--dir": str(tmp_path / "etc"), "--python": sys.executable,
            "--config": str(tmp_path / "c.yaml")}
    args[option] = value
    done = subprocess.run([str(CONTRIB / "install"), *[w for kv in args.items() for w in kv]],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and option in done.stderr


def test_rendered_prolog_with_the_real_python_refuses_a_bad_request(
        tmp_path: Path, config_data: dict[str, Any]) -> None:
    site = Site(tmp_path, config_data)
    site.jobs({JOB: dict(VM_JOB, Comment="vtorque:vcpus=100000")})
    prolog = tmp_path / "prolog-real"
    prolog.write_text(render("prolog", sys.executable, str(site.config),
                             str(site.bin_dir / "scontrol")))
    prolog.chmod(0o755)
    started = time.monotonic()
    done = run_shim(prolog, **site.env("n1", SLURM_JOB_RESTART_COUNT="0",
                                       SLURM_JOB_COMMENT="vtorque:vcpus=100000"))
    assert done.returncode == 0, done.stderr
    assert site.job()["JobState"] == "CANCELLED" and site.nodes() == {}
    assert time.monotonic() - started < 30


def test_the_last_epilog_releases_an_address_block(site: Site) -> None:
    """No files here, but the job holds a block (guest networking): it stays while a node
    that may run the job's guests has not ended; the last one releases it."""
    from vtorque import config as config_mod
    from vtorque.vm import addresses
    site.write_config(network={"mode": "network"})
    site.jobs({})
    cfg = config_mod.load(str(site.config))
    addresses.allocate(cfg, JOB, 2)
    publish_sister(site, node="n1", ok=True)
    assert site.main("epilog", node="n2") == 0
    assert addresses.allocated_jobs(cfg) == [JOB]
    assert site.main("epilog", node="n1") == 0
    assert addresses.allocated_jobs(cfg) == []


def _captured_env(name: str) -> dict[str, str]:
    text = (ROOT / "tests" / "data" / name).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_the_shims_read_what_slurm_22_05_really_passes(shims) -> None:
    """slurmd 22.05.8's Prolog environment (captured): SLURM_JOB_COMMENT next to
    SLURM_JOB_RESTART_COUNT, SLURM_NODELIST (not SLURM_JOB_NODELIST), SLURMD_NODENAME and
    SLURM_CONF; with the marker the shim hands exactly these to vtorque."""
    env = _captured_env("slurm-22.05-prolog-env.txt")
    assert env["SLURM_JOB_COMMENT"].startswith("vtorque:")
    assert {"SLURM_JOB_RESTART_COUNT", "SLURMD_NODENAME", "SLURM_CONF", "SLURM_NODELIST",
            "SLURM_JOB_USER", "SLURM_JOB_ID"} <= set(env)
    assert "SLURM_JOB_NODELIST" not in env and "PATH" not in env
    assert run_shim(shims.prolog, **env).returncode == 0
    (call,) = shims.fake.calls()
    assert call["env"] == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
                           **{k: env[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_USER",
                                                  "SLURMD_NODENAME", "SLURM_CONF",
                                                  "SLURM_NODELIST")}}
    plain = dict(env, SLURM_JOB_COMMENT="not a vm job")
    assert run_shim(shims.prolog, **plain).returncode == 0
    del plain["SLURM_JOB_COMMENT"]
    assert run_shim(shims.prolog, **plain).returncode == 0
    assert len(shims.fake.calls()) == 1 and calls(shims.db) == []
    epilog_env = _captured_env("slurm-22.05-epilog-env.txt")
    assert epilog_env["SLURM_SCRIPT_CONTEXT"] == "epilog_slurmd"
    assert run_shim(shims.epilog, **epilog_env).returncode == 0
    assert shims.fake.calls()[-1]["argv"][-2:] == ["slurm", "epilog"]
