"""The epilogue's fast path for jobs without VMs (vtorque.markers and the shims): a job's
mark on this node, the pointer that arms it, what the Torque and Slurm shims decide from a
stat, and that whatever is unsure runs vtorque."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vtorque import jobid, markers
from vtorque.errors import JobIdError, NodeError
from vtorque.journal import JobPaths, Journal

REPO = Path(__file__).resolve().parents[2]
JOB = "17.head"
EPILOGUE_ARGS = ["", "root", "root", "plain", "0", "", "", "batch", "", "0", ""]


@pytest.fixture
def cfg(make_config: Any, tmp_path: Path) -> Any:
    """A config whose path exists (the pointer goes beside it)."""
    config = make_config({"state_dir": str(tmp_path / "state"),
                          "ramdisk_dir": str(tmp_path / "ramdisk")})
    Path(config.path).write_text("# the config the tests parsed\n")
    return config


def pointer(cfg: Any) -> Path:
    return Path(markers.pointer_path(cfg.path))


def job_state(cfg: Any, job_id: str, *, journal: bool = True) -> JobPaths:
    """What the prologue of older code left for `job_id`: its job directory (with the
    journal naming the job) and the owner's directory."""
    paths = JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir)
    os.makedirs(paths.job_dir, mode=0o710)
    os.makedirs(paths.user_dir, mode=0o700)
    os.chmod(cfg.state_dir, 0o755)
    if journal:
        Journal(paths.journal).record("job-start", job_id=job_id, guests=[])
    return paths


# --- marks ---------------------------------------------------------------------------------

def test_a_mark_is_a_root_only_file_named_by_the_job(cfg: Any) -> None:
    assert not markers.marked(cfg, JOB)
    markers.mark(cfg, JOB)
    mark = Path(cfg.state_dir) / ".vm-jobs" / JOB
    assert mark.is_file() and mark.stat().st_mode & 0o777 == 0o600
    assert (mark.parent.stat().st_mode & 0o777, mark.parent.stat().st_uid) == (0o700, 0)
    assert Path(cfg.state_dir).stat().st_mode & 0o777 == 0o755
    markers.mark(cfg, JOB)                                   # again: fine
    assert markers.marked(cfg, JOB) and markers.jobs(cfg) == [JOB]
    assert markers.unmark(cfg, JOB) and not markers.marked(cfg, JOB)
    assert markers.unmark(cfg, JOB)                          # twice: nothing left, fine
    assert markers.jobs(cfg) == []


def test_the_first_mark_arms_the_fast_path(cfg: Any) -> None:
    assert not pointer(cfg).is_symlink()
    markers.mark(cfg, JOB)
    assert os.readlink(pointer(cfg)) == str(Path(cfg.state_dir) / ".vm-jobs")


@pytest.mark.parametrize("job_id", ["", "../x", "1/2", "a1", "1..2", "1" * 256, "1\n"])
def test_no_mark_for_what_is_not_a_job_id(cfg: Any, job_id: str) -> None:
    with pytest.raises(JobIdError):
        markers.mark(cfg, job_id)
    assert markers.unmark(cfg, job_id) is False
    assert not (Path(cfg.state_dir) / ".vm-jobs").exists() or \
        os.listdir(Path(cfg.state_dir) / ".vm-jobs") == []


def test_no_mark_in_a_state_directory_others_can_write(cfg: Any) -> None:
    os.makedirs(cfg.state_dir)
    os.chmod(cfg.state_dir, 0o777)
    with pytest.raises(NodeError, match="writable by group or others"):
        markers.mark(cfg, JOB)
    assert os.listdir(cfg.state_dir) == [] and not pointer(cfg).exists()


def test_an_odd_entry_in_place_of_a_mark_is_replaced(cfg: Any, tmp_path: Path) -> None:
    markers.mark(cfg, "1.a")
    directory = Path(cfg.state_dir) / ".vm-jobs"
    (directory / JOB).symlink_to(tmp_path / "elsewhere")
    markers.mark(cfg, JOB)
    assert (directory / JOB).is_file() and not (directory / JOB).is_symlink()
    assert not (tmp_path / "elsewhere").exists()


# --- arming ----------------------------------------------------------------------------------

def test_arming_adopts_what_older_code_left(cfg: Any, tmp_path: Path) -> None:
    job_state(cfg, "5.old")
    lock_dir = Path(cfg.state_dir) / ".locks"
    lock_dir.mkdir(mode=0o700)
    (lock_dir / "image-pool.lock").write_text("")          # not a job's: ignored
    (Path(cfg.state_dir) / "README").write_text("admin's")   # not a job key: ignored
    assert markers.arm(cfg) is None
    assert markers.jobs(cfg) == ["5.old"]
    assert pointer(cfg).is_symlink()


def test_state_that_no_journal_names_keeps_the_fast_path_off(cfg: Any) -> None:
    markers.mark(cfg, "1.a")                                   # armed
    assert pointer(cfg).is_symlink()
    paths = job_state(cfg, "6.lost", journal=False)
    why = markers.arm(cfg)
    assert why and paths.job_dir in why
    assert not pointer(cfg).exists() and not pointer(cfg).is_symlink()
    markers.mark(cfg, "2.b")                                   # a mark still is made
    assert markers.marked(cfg, "2.b") and not pointer(cfg).is_symlink()
    # Once it is gone, the next mark arms again.
    os.rmdir(paths.job_dir)
    os.rmdir(paths.user_dir)
    markers.mark(cfg, "3.c")
    assert pointer(cfg).is_symlink()


def test_a_journal_of_another_job_attributes_nothing(cfg: Any) -> None:
    paths = job_state(cfg, "7.x", journal=False)
    Journal(paths.journal).record("job-start", job_id="8.y", guests=[])
    assert markers.arm(cfg) is not None and markers.jobs(cfg) == []


def test_a_ramdisk_directory_of_a_job_without_a_mark_is_state(cfg: Any) -> None:
    paths = JobPaths.for_job("9.r", cfg.state_dir, cfg.ramdisk_dir)
    os.makedirs(paths.ramdisk_dir)
    os.chmod(cfg.ramdisk_dir, 0o755)
    assert markers.arm(cfg) is not None
    os.makedirs(paths.job_dir, mode=0o710)
    os.chmod(cfg.state_dir, 0o755)
    Journal(paths.journal).record("job-start", job_id="9.r", guests=[])
    assert markers.arm(cfg) is None and markers.jobs(cfg) == ["9.r"]


def test_virtual_functions_of_unmarked_jobs_are_adopted(cfg: Any) -> None:
    from vtorque import ibverbs
    assert markers.VF_LEDGER == ibverbs.VF_LEDGER
    os.makedirs(cfg.state_dir, mode=0o755)
    ledger = Path(cfg.state_dir) / markers.VF_LEDGER
    ledger.write_text(json.dumps({"0000:3b:00.1": {"job_id": "10.vf", "rank": 0}}))
    os.chmod(ledger, 0o600)
    assert markers.arm(cfg) is None and markers.jobs(cfg) == ["10.vf"]


def test_the_pointer_follows_the_state_directory(cfg: Any, make_config: Any,
                                                 tmp_path: Path) -> None:
    markers.mark(cfg, JOB)
    moved = make_config({"state_dir": str(tmp_path / "state2"),
                         "ramdisk_dir": str(tmp_path / "ramdisk")})
    assert moved.path == cfg.path
    markers.mark(moved, "2.b")
    assert os.readlink(pointer(cfg)) == str(tmp_path / "state2" / ".vm-jobs")
    markers.disarm(moved)
    assert not pointer(cfg).is_symlink()


def test_a_directory_in_place_of_the_pointer_is_replaced(cfg: Any) -> None:
    pointer(cfg).mkdir()
    assert markers.arm(cfg) is None and pointer(cfg).is_symlink()


# --- the shims -------------------------------------------------------------------------------

FAKE = """#!{python}
import json, sys
with open({record!r}, "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(0)
"""


class Shims:
    """The Torque epilogue shims and the Slurm Epilog as install renders them, with a
    stand-in for the python they run (it records each call)."""

    def __init__(self, tmp: Path, cfg: Any):
        self.record = tmp / "calls.jsonl"
        fake = tmp / "fake-python"
        fake.write_text(FAKE.format(python=sys.executable, record=str(self.record)))
        fake.chmod(0o755)
        site = tmp / "site"
        site.mkdir()
        self.site_status = site / "status"
        self.site_status.write_text("0")
        for event in ("epilogue", "epilogue.parallel"):
            (site / event).write_text(f"#!/bin/sh\nexit $(cat {self.site_status})\n")
            (site / event).chmod(0o755)
        template = (REPO / "contrib" / "torque_hooks" / "shim.in").read_text()
        self.torque = {}
        for event in ("epilogue", "epilogue.parallel", "epilogue.precancel"):
            text = template.replace("@EVENT@", event).replace("@SITE_DIR@", str(site))
            text = text.replace("@PYTHON@", str(fake)).replace("@CONFIG@", cfg.path)
            text = text.replace("@QSTAT@", "/nonexistent/qstat")
            path = tmp / event
            path.write_text(text)
            path.chmod(0o755)
            self.torque[event] = path
        lines = []
        for line in (REPO / "contrib" / "slurm" / "epilog").read_text().splitlines():
            if line.startswith("PYTHON="):
                line = f"PYTHON={fake}"
            elif line.startswith("CONFIG="):
                line = f"CONFIG={cfg.path}"
            lines.append(line)
        self.slurm = tmp / "epilog"
        self.slurm.write_text("\n".join(lines) + "\n")
        self.slurm.chmod(0o755)

    def calls(self) -> int:
        if not self.record.exists():
            return 0
        return len(self.record.read_text().splitlines())

    def torque_epilogue(self, job_id: str, event: str = "epilogue",
                        shell: str = "/bin/sh") -> int:
        args = [job_id, *EPILOGUE_ARGS[1:]]
        done = subprocess.run([shell, str(self.torque[event]), *args], env={},
                              capture_output=True, text=True, timeout=60)
        return done.returncode

    def slurm_epilog(self, job_id: str) -> int:
        done = subprocess.run([str(self.slurm)], env={"SLURM_JOB_ID": job_id},
                              capture_output=True, text=True, timeout=60)
        return done.returncode


@pytest.fixture
def shims(tmp_path: Path, cfg: Any) -> Shims:
    return Shims(tmp_path, cfg)


def test_shipped_shims_are_still_valid_sh() -> None:
    for path in (REPO / "contrib" / "torque_hooks" / "shim.in",
                 REPO / "contrib" / "slurm" / "epilog"):
        for shell in ("dash", "bash"):
            assert subprocess.run([shell, "-n", str(path)], timeout=30).returncode == 0


def test_not_armed_every_epilogue_runs_vtorque(shims: Shims, cfg: Any) -> None:
    assert shims.torque_epilogue(JOB) == 0 and shims.slurm_epilog("17") == 0
    assert shims.calls() == 2


@pytest.mark.parametrize("shell", ["/bin/sh", "dash", "bash"])
def test_armed_a_job_without_a_mark_costs_no_python(shims: Shims, cfg: Any,
                                                    shell: str) -> None:
    markers.mark(cfg, "1.other")
    assert shims.torque_epilogue(JOB, shell=shell) == 0
    assert shims.torque_epilogue(JOB, "epilogue.parallel", shell=shell) == 0
    assert shims.slurm_epilog("17") == 0
    assert shims.calls() == 0
    shims.site_status.write_text("3")                # the site's own epilogue failed
    assert shims.torque_epilogue(JOB, shell=shell) == 3 and shims.calls() == 0


def test_armed_a_marked_job_runs_vtorque(shims: Shims, cfg: Any) -> None:
    markers.mark(cfg, JOB)
    markers.mark(cfg, "17")
    assert shims.torque_epilogue(JOB) == 0
    assert shims.torque_epilogue(JOB, "epilogue.parallel") == 0
    assert shims.slurm_epilog("17") == 0
    assert shims.calls() == 3
    markers.unmark(cfg, JOB)
    assert shims.torque_epilogue(JOB) == 0 and shims.calls() == 3


def test_any_entry_of_the_jobs_name_runs_vtorque(shims: Shims, cfg: Any,
                                                 tmp_path: Path) -> None:
    markers.mark(cfg, "1.other")
    directory = Path(cfg.state_dir) / ".vm-jobs"
    (directory / JOB).symlink_to(tmp_path / "dangling")
    (directory / "17").mkdir()
    assert shims.torque_epilogue(JOB) == 0 and shims.slurm_epilog("17") == 0
    assert shims.calls() == 2


def test_a_pointer_that_is_no_symlink_or_leads_nowhere_runs_vtorque(shims: Shims,
                                                                    cfg: Any) -> None:
    markers.mark(cfg, "1.other")
    pointer(cfg).unlink()
    pointer(cfg).mkdir()                                # a real directory: not armed
    assert shims.torque_epilogue(JOB) == 0 and shims.calls() == 1
    pointer(cfg).rmdir()
    pointer(cfg).symlink_to(Path(cfg.state_dir) / "gone")
    assert shims.torque_epilogue(JOB) == 0 and shims.slurm_epilog("17") == 0
    assert shims.calls() == 3


def test_the_precancel_shim_never_runs_vtorque(shims: Shims) -> None:
    assert shims.torque_epilogue(JOB, "epilogue.precancel") == 0 and shims.calls() == 0


_ID_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
                   max_size=12) | st.from_regex(r"[0-9][A-Za-z0-9._\[\]@+/ -]{0,8}",
                                                fullmatch=True)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(job_id=_ID_TEXT)
@example(job_id="12[3].srv")
@example(job_id="1..2")
@example(job_id="1/x")
@example(job_id="1" * 256)
@example(job_id="1]")
@example(job_id="7-\u212a")
def test_the_shim_skips_only_ids_vtorque_would_use_as_the_marks_name(
        shims: Shims, cfg: Any, job_id: str) -> None:
    """Whatever the id, the shim skips vtorque only when vtorque's own rule accepts it
    (so the name the shim looks at is the one the prologue would have marked)."""
    if not markers.marked(cfg, "1.other"):
        markers.mark(cfg, "1.other")
    before = shims.calls()
    shims.torque_epilogue(job_id)
    skipped = shims.calls() == before
    try:
        jobid.check(job_id)
        valid = True
    except JobIdError:
        valid = False
    assert skipped == valid, job_id


def test_a_mark_never_leaves_the_pointer_leading_to_other_marks(
        cfg: Any, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """state_dir moved, and arming fails (say a damaged function ledger): the job's mark
    is in the new directory, so the pointer must not keep leading to the old one."""
    markers.mark(cfg, "1.old")
    moved = make_config({"state_dir": str(tmp_path / "state2"),
                         "ramdisk_dir": str(tmp_path / "ramdisk")})

    def broken(config: Any, directory: str) -> list[str]:
        raise NodeError("virtual function assignments: damaged")
    monkeypatch.setattr(markers, "_adopt", broken)
    markers.mark(moved, JOB)
    assert markers.marked(moved, JOB)
    assert not pointer(cfg).exists() and not pointer(cfg).is_symlink()


# --- end to end: the prologue marks, the real Python epilogue unmarks, the shim skips --------

REAL = """#!/bin/sh
echo call >> {record}
exec {python} "$@"
"""


class RealShims(Shims):
    """The shims running the real vtorque epilogue (through a wrapper that counts the
    calls), with the config they were installed for."""

    def __init__(self, tmp: Path, cfg: Any):
        super().__init__(tmp, cfg)
        wrapper = tmp / "fake-python"                   # the python the shims run
        wrapper.write_text(REAL.format(record=self.record, python=sys.executable))
        wrapper.chmod(0o755)

    def torque_epilogue_run(self, job_id: str) -> subprocess.CompletedProcess:
        return subprocess.run(["/bin/sh", str(self.torque["epilogue"]), job_id,
                               *EPILOGUE_ARGS[1:]], env={}, capture_output=True,
                              text=True, timeout=120)


@pytest.fixture
def site_cfg(config_data: dict[str, Any], tmp_path: Path) -> Any:
    """A node's config in its file, as the hooks load it."""
    import yaml

    from vtorque import config as config_mod
    data = dict(config_data, state_dir=str(tmp_path / "state"),
                ramdisk_dir=str(tmp_path / "ramdisk"), node_name="n1",
                # No libvirt daemon is ever reached: a teardown that needs libvirt fails.
                libvirt_uri=f"test://{tmp_path}/no-such-driver.xml")
    # No batch server either: taking the node offline fails, and says so.
    empty = tmp_path / "no-batch-commands"
    empty.mkdir()
    data["batch"] = dict(data["batch"], system="torque", bin_dir=str(empty))
    path = tmp_path / "vtorque.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_mod.load(str(path))


def _prologue(cfg: Any, monkeypatch: pytest.MonkeyPatch, vm: str | None) -> list[bool]:
    """A job's prologue on this node (the mother superior of a one-node job), its guests
    a recorder that notes whether the mark was there."""
    from types import SimpleNamespace

    from vtorque.batch.base import JobContext
    from vtorque.prologue import guests, provision
    seen: list[bool] = []

    def bring_up(job_id: str, request: Any, config: Any, **kwargs: Any) -> Any:
        seen.append(markers.marked(config, job_id))
        guest = SimpleNamespace(rank=0, name="vt-0", hostname="vm0", mac="52:54:00:00:00:01",
                                address=None, ready_seconds=0.5, started="boot")
        return SimpleNamespace(guests=[guest], seconds=0.1, restored=0, image_kind="kernel",
                               image_name="testguest", image_digest="0" * 64, rdma=None), []
    monkeypatch.setattr(guests, "bring_up", bring_up)
    ctx = JobContext(scheduler="torque", job_id=JOB, user="root", group="root",
                     job_name="job", queue="batch", nodes=("n1",), slots=(1,),
                     vm_request=vm, workdir=None, run_count=1, created=1796170623, uid=0)
    outcome = provision.start(ctx, cfg, mother_superior=False)
    assert outcome.action == "run", outcome.message
    return seen


def test_end_to_end_a_vm_jobs_epilogue_runs_vtorque_once_then_its_id_costs_nothing(
        tmp_path: Path, site_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shims = RealShims(tmp_path, site_cfg)
    markers.mark(site_cfg, "1.other")                # the fast path is armed here
    assert pointer(site_cfg).is_symlink()
    assert _prologue(site_cfg, monkeypatch, "vcpus=1") == [True]
    assert markers.marked(site_cfg, JOB)
    assert os.path.lexists(handoff_dir(site_cfg))     # the job's status in the hand-off
    done = shims.torque_epilogue_run(JOB)
    assert done.returncode == 0, done.stderr
    assert shims.calls() == 1                        # the marked job ran vtorque
    assert not markers.marked(site_cfg, JOB)         # which left nothing, and no mark
    assert not os.path.lexists(handoff_dir(site_cfg))
    assert shims.torque_epilogue_run(JOB).returncode == 0
    assert shims.calls() == 1                        # now the shim skips vtorque


def test_end_to_end_a_job_without_vms_never_runs_vtorque(
        tmp_path: Path, site_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shims = RealShims(tmp_path, site_cfg)
    markers.mark(site_cfg, "1.other")
    _prologue(site_cfg, monkeypatch, None)
    assert not markers.marked(site_cfg, JOB)
    for _ in range(2):
        assert shims.torque_epilogue_run(JOB).returncode == 0
    assert shims.calls() == 0


def test_end_to_end_a_failed_teardown_keeps_the_job_on_the_python_path(
        tmp_path: Path, site_cfg: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's guests cannot be reached (libvirt refuses): the epilogue fails, the mark
    stays, and every later epilogue of the job runs vtorque again."""
    shims = RealShims(tmp_path, site_cfg)
    markers.mark(site_cfg, "1.other")
    _prologue(site_cfg, monkeypatch, "vcpus=1")
    paths = JobPaths.for_job(JOB, site_cfg.state_dir, site_cfg.ramdisk_dir)
    os.makedirs(paths.job_dir)                       # the guests' state on this node
    first = shims.torque_epilogue_run(JOB)
    assert first.returncode != 0
    assert f"teardown of job {JOB} on n1 incomplete" in first.stderr
    assert "Traceback" not in first.stderr
    assert markers.marked(site_cfg, JOB)
    shims.torque_epilogue_run(JOB)
    assert shims.calls() == 2


def handoff_dir(cfg: Any) -> str:
    from vtorque.cluster import handoff
    return handoff.job_dir(cfg, JOB)
