"""Unit tests of vtorque.epilogue.reaper with a fake batch system and the node's jobs and
clean-up monkeypatched (no libvirt)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from vtorque.batch.base import BatchSystem, JobContext
from vtorque.errors import UnknownJobError
from vtorque.admin import reaper
from vtorque.epilogue import teardown
from vtorque.errors import CommandError, NodeError, TeardownError
from vtorque.journal import JobPaths, Journal


class FakeBatch(BatchSystem):
    """answers: job id -> a state string (or None), or an exception to raise."""

    name = "fake"

    def __init__(self, answers: dict[str, Any]):
        super().__init__("/nonexistent")
        self.answers = answers
        self.asked: list[str] = []

    def job(self, job_id: str) -> JobContext:
        self.asked.append(job_id)
        answer = self.answers[job_id]
        if isinstance(answer, Exception):
            raise answer
        return JobContext(scheduler="fake", job_id=job_id, user="alice", group=None,
                          job_name="j", queue=None, nodes=("n1",), slots=(1,),
                          vm_request="vcpus=1", workdir=None, state=answer)

    def offline_node(self, node: str, reason: str) -> None:
        raise AssertionError("the reaper never takes nodes offline")


ANSWERS = {
    "1.h": "R", "2.h": "C", "3.h": "E", "4.h": UnknownJobError("fake", "4.h"),
    "5.h": NodeError("cannot connect to server"), "6.h": None, "7.h": "F",
    "8.h": CommandError(["qstat"], 1, "", "qstat: cannot connect"), "9.h": "running",
    "10.h": "COMPLETED",
}


@pytest.fixture
def config(make_config: Any, tmp_path: Path) -> Any:
    return make_config({"log_file": str(tmp_path / "log" / "vt.log"), "node_name": "n1"})


@pytest.fixture
def cleaned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    done: list[tuple[str, bool]] = []

    def clean_node(job_id: str, config: Any, *, domains: bool = False) -> list[str]:
        done.append((job_id, domains))
        return []
    monkeypatch.setattr(teardown, "clean_node", clean_node)
    return done


def local(monkeypatch: pytest.MonkeyPatch, jobs: set[str]) -> None:
    monkeypatch.setattr(reaper, "local_jobs", lambda config: set(jobs))


def by_job(verdicts: list[reaper.Verdict]) -> dict[str, reaper.Verdict]:
    return {v.job_id: v for v in verdicts}


def test_finished_and_unknown_jobs_are_reaped_running_kept(
        config: Any, cleaned: list, monkeypatch: pytest.MonkeyPatch) -> None:
    local(monkeypatch, set(ANSWERS))
    batch = FakeBatch(ANSWERS)
    verdicts = by_job(reaper.reap(config, batch))
    actions = {job: v.action for job, v in verdicts.items()}
    assert actions == {"1.h": "kept", "2.h": "reaped", "3.h": "kept", "4.h": "reaped",
                       "5.h": "unknown", "6.h": "kept", "7.h": "reaped", "8.h": "unknown",
                       "9.h": "kept", "10.h": "reaped"}
    assert sorted(cleaned) == sorted((j, True) for j in ("2.h", "4.h", "7.h", "10.h"))
    assert "unknown to the batch system" in verdicts["4.h"].reason
    assert "state C" in verdicts["2.h"].reason
    assert "cannot ask the batch system" in verdicts["5.h"].reason
    assert "cannot connect to server" in verdicts["5.h"].reason
    assert sorted(batch.asked) == sorted(ANSWERS)


def test_unreachable_server_cleans_nothing(config: Any, cleaned: list,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    local(monkeypatch, {"1.h", "2.h"})
    down = NodeError("qstat: cannot connect to server head")
    verdicts = reaper.reap(config, FakeBatch({"1.h": down, "2.h": down}))
    assert [v.action for v in verdicts] == ["unknown", "unknown"]
    assert cleaned == []


def test_dry_run_cleans_nothing(config: Any, cleaned: list,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    local(monkeypatch, set(ANSWERS))
    verdicts = by_job(reaper.reap(config, FakeBatch(ANSWERS), dry_run=True))
    assert verdicts["2.h"].action == "reaped" and verdicts["4.h"].action == "reaped"
    assert verdicts["1.h"].action == "kept"
    assert cleaned == []


def test_failed_cleanup_is_reported_not_reaped(config: Any, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    local(monkeypatch, {"2.h", "7.h"})

    def clean_node(job_id: str, cfg: Any, *, domains: bool = False) -> list[str]:
        if job_id == "2.h":
            raise TeardownError(job_id, ["guest x still exists"])
        return []
    monkeypatch.setattr(teardown, "clean_node", clean_node)
    verdicts = by_job(reaper.reap(config, FakeBatch(ANSWERS)))
    assert verdicts["2.h"].action == "unknown"
    assert "cleanup failed" in verdicts["2.h"].reason
    assert verdicts["7.h"].action == "reaped"


def test_no_local_jobs_asks_nobody(config: Any, cleaned: list,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    local(monkeypatch, set())
    batch = FakeBatch({})
    assert reaper.reap(config, batch) == []
    assert batch.asked == [] and cleaned == []


# --- empty job directories ----------------------------------------------------------------

def age(path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def make_dirs(config: Any) -> dict[str, str]:
    state = config.state_dir
    os.makedirs(state)
    made, ages = {}, {}
    for name, seconds in (("old", reaper.EMPTY_DIR_GRACE + 60), ("young", 5),
                          ("journaled", reaper.EMPTY_DIR_GRACE + 60)):
        path = os.path.join(state, f"{name}-0123456789")
        os.mkdir(path)
        made[name] = path
        ages[name] = seconds
    Journal(os.path.join(made["journaled"], "journal.jsonl")).record("job-start",
                                                                     job_id="70.h")
    hidden = os.path.join(state, ".locks")
    os.mkdir(hidden)
    made["hidden"] = hidden
    plain = os.path.join(state, "stray-file")
    Path(plain).write_text("x")
    made["file"] = plain
    ages.update(hidden=reaper.EMPTY_DIR_GRACE + 60, file=reaper.EMPTY_DIR_GRACE + 60)
    for name, seconds in ages.items():      # last: the journal write touched its dir
        age(made[name], seconds)
    return made


def test_old_empty_directories_are_removed(config: Any, cleaned: list,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_dirs(config)
    local(monkeypatch, set())
    verdicts = reaper.reap(config, FakeBatch({}))
    assert [(v.job_id, v.action, v.reason) for v in verdicts] == [
        (os.path.basename(made["old"]), "reaped", "empty job directory")]
    assert not os.path.exists(made["old"])
    for name in ("young", "journaled", "hidden", "file"):
        assert os.path.exists(made[name]), name


def test_dry_run_keeps_empty_directories(config: Any, cleaned: list,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    made = make_dirs(config)
    local(monkeypatch, set())
    verdicts = reaper.reap(config, FakeBatch({}), dry_run=True)
    assert [v.job_id for v in verdicts] == [os.path.basename(made["old"])]
    assert os.path.exists(made["old"])


def test_missing_state_dir_is_fine(config: Any, cleaned: list,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    local(monkeypatch, set())
    assert reaper.reap(config, FakeBatch({})) == []


def test_symlinked_directory_is_never_followed(config: Any, cleaned: list, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    os.makedirs(config.state_dir)
    link = os.path.join(config.state_dir, "link-0123456789")
    os.symlink(victim, link)
    age(link, reaper.EMPTY_DIR_GRACE + 60)
    age(str(victim), reaper.EMPTY_DIR_GRACE + 60)
    local(monkeypatch, set())
    assert reaper.reap(config, FakeBatch({})) == []
    assert (victim / "keep").exists() and os.path.islink(link)


def test_user_dir_of_a_running_job_is_kept(config: Any, cleaned: list,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    paths = JobPaths.for_job("1.h", config.state_dir, config.ramdisk_dir)
    os.makedirs(paths.job_dir)
    Journal(paths.journal).record("job-start", job_id="1.h")
    os.mkdir(paths.user_dir, 0o700)
    Path(paths.user_dir, "ssh_config").write_text("Host *\n")
    age(paths.user_dir, reaper.EMPTY_DIR_GRACE + 60)
    local(monkeypatch, {"1.h"})
    verdicts = reaper.reap(config, FakeBatch({"1.h": "R"}))
    assert [v.action for v in verdicts] == ["kept"]
    assert os.path.exists(os.path.join(paths.user_dir, "ssh_config"))


def test_local_jobs_reads_journals(config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """local_jobs without libvirt: Host replaced by one that holds no domains."""
    from vtorque.vm import host as host_mod

    class NoDomains:
        def __init__(self, uri: str):
            self.uri = uri

        def __enter__(self) -> NoDomains:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

        def tagged_domains(self, job_id: str | None = None, node: str | None = None) -> list:
            assert node == "n1"
            return []
    monkeypatch.setattr(host_mod, "Host", NoDomains)
    assert reaper.local_jobs(config) == set()
    for job in ("40.h", "41[2].h"):
        p = JobPaths.for_job(job, config.state_dir, config.ramdisk_dir)
        os.makedirs(p.job_dir)
        Journal(p.journal).record("job-start", job_id=job)
    os.makedirs(os.path.join(config.state_dir, "empty-0000000000"))
    assert reaper.local_jobs(config) == {"40.h", "41[2].h"}
    # A mark alone (a teardown that did not complete) is a job of this node too: the
    # reaper asks about it, and cleaning it removes the mark.
    from vtorque import markers
    markers.mark(config, "42.h")
    assert reaper.local_jobs(config) == {"40.h", "41[2].h", "42.h"}
    teardown.clean_node("42.h", config)
    assert not markers.marked(config, "42.h")
    assert reaper.local_jobs(config) == {"40.h", "41[2].h"}


def test_template_guests_are_a_pass_of_their_own_that_asks_only_libvirt(
        monkeypatch, make_config) -> None:
    from vtorque.errors import HypervisorError
    from vtorque.vm import host as host_mod
    from vtorque.vm import restore
    cfg = make_config({})

    class Leftover:
        def __init__(self, uri): ...
        def __enter__(self): return self
        def __exit__(self, *exc): ...
        def template_domains(self): return [("vtorque-template-abc", "c" * 32)]

    monkeypatch.setattr(host_mod, "Host", Leftover)
    monkeypatch.setattr(restore, "reap_templates", lambda host, config: ["vtorque-template-abc"])
    assert [(v.action, v.reason) for v in reaper.reap_template_guests(cfg)] == [
        ("reaped", "snapshot template guest vtorque-template-abc left by a killed build")]
    assert [v.action for v in reaper.reap_template_guests(cfg, dry_run=True)] == ["reaped"]

    def unreachable(uri):
        raise HypervisorError("cannot connect to libvirt at qemu:///system: no socket")
    monkeypatch.setattr(host_mod, "Host", unreachable)
    [verdict] = reaper.reap_template_guests(cfg)
    assert verdict.action == "unknown" and "cannot connect" in verdict.reason
