"""Unit tests of vtorque.cluster.handoff: node status files in the shared state directory
and the mother superior's wait for all of them."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from vtorque.journal import job_key
from vtorque.cluster import handoff
from vtorque.cluster.handoff import FAILED, READY, NodeStatus

JOB = "77.head"
NODES = ("n1", "n2.cluster", "n3")


@pytest.fixture
def config(make_config: Any, tmp_path: Path) -> Any:
    return make_config({"batch": {"shared_state_dir": str(tmp_path / "shared" / "vt")}})


def status_path(config: Any, node: str) -> Path:
    return Path(config.batch.shared_state_dir) / job_key(JOB) / f"{node}.json"


class Clock:
    """A fake monotonic clock: each reading advances by `step` seconds."""

    def __init__(self, step: float = 1.0):
        self.now = 1000.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


def test_publish_and_read_round_trip(config: Any) -> None:
    guests = [{"rank": 0, "name": "vtorque-x-0", "hostname": "vt77-0", "mac": "52:54:00:1:2:3"}]
    handoff.publish(config, JOB, NodeStatus("n1", READY, guests=guests))
    handoff.publish(config, JOB, NodeStatus("n2.cluster", FAILED, "disk full", user_fault=False))
    assert handoff.read(config, JOB, "n1") == NodeStatus("n1", READY, "", False, guests,
                                                         job_id=JOB)
    assert handoff.read(config, JOB, "n2.cluster") == NodeStatus("n2.cluster", FAILED,
                                                                 "disk full", job_id=JOB)
    assert handoff.read(config, JOB, "n3") is None
    path = status_path(config, "n1")
    assert json.loads(path.read_text())["state"] == READY
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert handoff.job_dir(config, JOB) == str(path.parent)
    # No temp files left next to the status files.
    assert sorted(os.listdir(path.parent)) == ["n1.json", "n2.cluster.json"]


def test_publish_replaces_an_earlier_status(config: Any) -> None:
    handoff.publish(config, JOB, NodeStatus("n1", FAILED, "first try"))
    handoff.publish(config, JOB, NodeStatus("n1", READY))
    assert handoff.read(config, JOB, "n1").state == READY


def test_jobs_do_not_share_status(config: Any) -> None:
    handoff.publish(config, JOB, NodeStatus("n1", READY))
    assert handoff.read(config, "78.head", "n1") is None
    assert handoff.read(config, "77", "n1") is None


def test_collect_all_ready(config: Any) -> None:
    for node in NODES:
        handoff.publish(config, JOB, NodeStatus(node, READY))
    got = handoff.collect(config, JOB, NODES, timeout=5, poll=0)
    assert set(got) == set(NODES)
    assert all(s.state == READY for s in got.values())


def test_collect_waits_for_late_nodes(config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    handoff.publish(config, JOB, NodeStatus("n1", READY))
    polls = []

    def late_sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 3:
            for node in NODES[1:]:
                handoff.publish(config, JOB, NodeStatus(node, READY))

    monkeypatch.setattr(handoff.time, "sleep", late_sleep)
    got = handoff.collect(config, JOB, NODES, timeout=60, poll=0.5)
    assert polls == [0.5, 0.5, 0.5]
    assert [got[n].state for n in NODES] == [READY] * 3


def test_collect_returns_at_once_when_one_failed(config: Any) -> None:
    handoff.publish(config, JOB, NodeStatus("n2.cluster", FAILED, "libvirtd down"))
    started = time.monotonic()
    got = handoff.collect(config, JOB, NODES, timeout=60, poll=5)
    assert time.monotonic() - started < 2
    assert got["n2.cluster"] == NodeStatus("n2.cluster", FAILED, "libvirtd down", job_id=JOB)
    assert "n1" not in got and "n3" not in got


def test_a_starting_node_has_not_reported_yet(config: Any) -> None:
    handoff.publish(config, JOB, NodeStatus("n1", READY))
    handoff.publish(config, JOB, NodeStatus("n3", handoff.STARTING))
    got = handoff.collect(config, JOB, ("n1", "n3"), timeout=3, poll=0, clock=Clock(1.0))
    assert got["n3"].state == FAILED and "did not report" in got["n3"].reason
    assert handoff.nodes_left(config, JOB) == ["n1", "n3"]


def test_silence_past_the_timeout_fails_the_silent_node(config: Any) -> None:
    handoff.publish(config, JOB, NodeStatus("n1", READY))
    handoff.publish(config, JOB, NodeStatus("n3", READY))
    clock = Clock(step=1.0)
    got = handoff.collect(config, JOB, NODES, timeout=10, poll=0, clock=clock)
    assert got["n1"].state == READY and got["n3"].state == READY
    silent = got["n2.cluster"]
    assert silent.state == FAILED
    assert not silent.user_fault
    assert "n2.cluster" in silent.reason and "10 s" in silent.reason
    assert clock.now >= 1010                 # it did wait for the whole timeout
    assert clock.reads < 30                  # and then stopped


@pytest.mark.parametrize("content", ["{torn", "[]", "null", '"ready"',
                                     '{"node": "n1", "state": "ready", "extra": 1}',
                                     '{"state": "ready"}'])
def test_unreadable_status_is_a_failure(config: Any, content: str) -> None:
    handoff.publish(config, JOB, NodeStatus("n3", READY))
    status_path(config, "n1").write_text(content)
    got = handoff.read(config, JOB, "n1")
    assert got.state == FAILED and got.node == "n1"
    assert "unreadable status file" in got.reason
    collected = handoff.collect(config, JOB, ("n1", "n3"), timeout=60, poll=5)
    assert collected["n1"].state == FAILED


def test_a_directory_in_place_of_the_status_file_is_a_failure(config: Any) -> None:
    os.makedirs(status_path(config, "n1"))
    got = handoff.read(config, JOB, "n1")
    assert got.state == FAILED and "unreadable" in got.reason


def test_withdraw_and_clear(config: Any) -> None:
    for node in NODES:
        handoff.publish(config, JOB, NodeStatus(node, READY))
    handoff.publish(config, "78.head", NodeStatus("n1", READY))
    handoff.withdraw(config, JOB, "n1")
    assert handoff.read(config, JOB, "n1") is None
    assert handoff.read(config, JOB, "n3").state == READY
    handoff.withdraw(config, JOB, "n1")          # twice: fine
    handoff.withdraw(config, "99.none", "n1")    # never published: fine
    handoff.clear(config, JOB)
    assert not os.path.lexists(handoff.job_dir(config, JOB))
    assert handoff.read(config, "78.head", "n1").state == READY
    handoff.clear(config, JOB)                   # twice: fine


def test_collect_ignores_statuses_of_an_earlier_run(config: Any) -> None:
    # A requeued job: run 1 left "ready" behind; run 2 must wait for fresh news.
    handoff.publish(config, "5.s", NodeStatus("n1", READY, run=1))
    handoff.publish(config, "5.s", NodeStatus("n2", READY, run=2))
    got = handoff.collect(config, "5.s", ["n1", "n2"], timeout=0.3, poll=0.05, run=2)
    assert got["n2"].state == READY
    assert got["n1"].state == FAILED and "did not report" in got["n1"].reason


def test_withdraw_removes_any_spelling_of_the_node(config: Any) -> None:
    handoff.publish(config, "6.s", NodeStatus("n1.cluster", READY))
    handoff.publish(config, "6.s", NodeStatus("n10", READY))
    handoff.withdraw(config, "6.s", "n1")
    assert handoff.read(config, "6.s", "n1.cluster") is None
    assert handoff.read(config, "6.s", "n10") is not None     # n10 is not n1


@pytest.mark.parametrize("clean,released", [(True, True), (False, False)])
def test_a_failed_node_that_rolled_back_does_not_keep_the_jobs_pieces(
        config: Any, clean: bool, released: bool) -> None:
    """Torque runs no epilogue on a sister whose prologue failed: when the mother
    superior leaves, a sister that said it holds nothing must not keep the hand-off
    directory; one that may still hold guests (its rollback failed) must."""
    from vtorque.cluster import jobwide
    handoff.publish(config, JOB, NodeStatus("n2", FAILED, "guest did not answer",
                                            clean=clean))
    jobwide.join(config, JOB, "n1", 1, 2)
    assert jobwide.leave(config, JOB, "n1") is released
    assert os.path.lexists(handoff.job_dir(config, JOB)) is not released
    if not released:                   # that sister's own epilogue or reaper, later
        assert jobwide.leave(config, JOB, "n2") is True
    assert not os.path.lexists(handoff.job_dir(config, JOB))
