"""Unit tests of vtorque.cluster.jobwide: the last node out releases the job-wide pieces,
and leaving costs the same whatever the number of nodes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vtorque.cluster import handoff, jobwide
from vtorque.cluster.handoff import READY, NodeStatus
from vtorque.vm import addresses

JOB = "41.head"


@pytest.fixture
def config(make_config: Any, tmp_path: Path) -> Any:
    return make_config({"batch": {"shared_state_dir": str(tmp_path / "shared")},
                        "network": {"mode": "bridge"}})


def test_the_last_node_out_releases_the_address_block(config: Any) -> None:
    for node in ("n1", "n2", "n3"):
        jobwide.join(config, JOB, node, 0, 3)
    assert addresses.allocated_jobs(config) == [JOB]
    assert jobwide.leave(config, JOB, "n2") is False
    assert jobwide.leave(config, JOB, "n1") is False
    assert addresses.allocated_jobs(config) == [JOB]
    assert handoff.nodes_left(config, JOB) == ["n3"]
    assert jobwide.leave(config, JOB, "n3") is True
    assert addresses.allocated_jobs(config) == []
    assert not os.path.lexists(handoff.job_dir(config, JOB))
    # Leaving again (a second epilogue, the reaper): nothing left, nothing to do twice.
    assert jobwide.leave(config, JOB, "n3") is True


def test_a_node_that_never_joined_leaves_nothing_behind(config: Any) -> None:
    assert jobwide.leave(config, "42.head", "n1") is True
    jobwide.join(config, JOB, "n1", 0, 2)
    assert jobwide.leave(config, JOB, "n9") is False           # n1 is still there
    assert addresses.allocated_jobs(config) == [JOB]


def test_leave_finds_this_node_under_another_spelling(config: Any) -> None:
    """The job's node list said n1.cluster; the epilogue knows itself as n1."""
    jobwide.join(config, JOB, "n1.cluster", 0, 2)
    handoff.publish(config, JOB, NodeStatus("n10", READY))
    assert jobwide.leave(config, JOB, "n1") is False            # n10 is not n1
    assert handoff.nodes_left(config, JOB) == ["n10"]
    assert jobwide.leave(config, JOB, "n10") is True
    assert addresses.allocated_jobs(config) == []


def test_leave_never_takes_the_node_name_as_a_path(config: Any, tmp_path: Path) -> None:
    jobwide.join(config, JOB, "n1", 0, 1)
    outside = tmp_path / "shared" / "x.json"
    outside.write_text("{}")
    assert jobwide.leave(config, JOB, "../x") is False
    assert outside.exists() and handoff.nodes_left(config, JOB) == ["n1"]


def test_leave_reads_no_directory_listing_when_the_exact_name_is_there(
        config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant work per node: the exact status file goes by name, and "anyone left"
    stops at the first status file; the full listing (sorted, every name) is never
    read, which made 4096 nodes leaving quadratic."""
    nodes = [f"n{i:04d}" for i in range(50)]
    for node in nodes:
        handoff.publish(config, JOB, NodeStatus(node, READY))
    listed: list[str] = []
    real = handoff.nodes_left_in

    def counting(cfg: Any, key: str) -> list[str]:
        listed.append(key)
        return real(cfg, key)
    monkeypatch.setattr(handoff, "nodes_left_in", counting)
    released = [jobwide.leave(config, JOB, node) for node in nodes]
    assert released == [False] * 49 + [True]
    assert listed == []
    assert not os.path.lexists(handoff.job_dir(config, JOB))


def test_a_status_directory_that_is_not_roots_is_refused(config: Any) -> None:
    from vtorque.errors import NodeError
    jobwide.join(config, JOB, "n1", 0, 1)
    os.chmod(handoff.job_dir(config, JOB), 0o777)
    with pytest.raises(NodeError, match="writable by group or others"):
        jobwide.leave(config, JOB, "n1")
    assert addresses.allocated_jobs(config) == [JOB]
