"""Unit tests of vtorque.epilogue.teardown: one node's epilogue, without libvirt
(vtorque.vm.lifecycle.down monkeypatched)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtorque import markers
from vtorque.epilogue import teardown
from vtorque.errors import NodeError, TeardownError
from vtorque.journal import JobPaths
from vtorque.cluster import handoff
from vtorque.vm import addresses, lifecycle

JOB = "55.head"


@pytest.fixture
def config_dict(config_data: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return dict(config_data, node_name="n1", log_file=str(tmp_path / "log" / "vt.log"),
                network={"mode": "bridge", "subnet": "10.7.0.0/24", "gateway": "10.7.0.1"},
                batch={"shared_state_dir": str(tmp_path / "shared")})


@pytest.fixture
def config(config_dict: dict[str, Any], tmp_path: Path) -> Any:
    from vtorque import config as config_mod
    path = tmp_path / "vtorque.yaml"
    path.write_text(yaml.safe_dump(config_dict))
    return config_mod.load(str(path))


@pytest.fixture
def no_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("lifecycle.down called")
    monkeypatch.setattr(lifecycle, "down", boom)


def paths(config: Any, job: str = JOB) -> JobPaths:
    return JobPaths.for_job(job, config.state_dir, config.ramdisk_dir)


def test_has_local_state(config: Any) -> None:
    assert not teardown.has_local_state(JOB, config)
    p = paths(config)
    for made in (p.job_dir, p.ramdisk_dir, p.user_dir, p.lock):
        os.makedirs(os.path.dirname(made), exist_ok=True)
        Path(made).touch() if made == p.lock else os.mkdir(made)
        assert teardown.has_local_state(JOB, config), made
        assert not teardown.has_local_state("56.head", config)
        os.rmdir(made) if made != p.lock else os.unlink(made)
    assert not teardown.has_local_state(JOB, config)
    # A dangling symlink counts too (lexists): teardown must look at it.
    os.symlink("/nonexistent", p.job_dir)
    assert teardown.has_local_state(JOB, config)


def test_job_without_state_costs_nothing(config: Any, no_down: None) -> None:
    for _ in range(2):
        assert teardown.teardown(JOB, config) == (True, "")
    assert not os.path.exists(config.state_dir)
    assert not os.path.exists(config.batch.shared_state_dir)
    assert not os.path.exists(config.log_file)


def test_job_without_state_imports_no_libvirt(config: Any) -> None:
    script = ("import sys\nfrom vtorque import config\nfrom vtorque.epilogue import teardown\n"
              "cfg = config.load(sys.argv[1])\n"
              "print(teardown.teardown('55.head', cfg))\n"
              "print(sorted(m for m in sys.modules if m == 'libvirt' or "
              "m.startswith('vtorque.vm.')))\n")
    done = subprocess.run([sys.executable, "-c", script, config.path], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result, modules = done.stdout.splitlines()
    assert result == "(True, '')"
    assert "libvirt" not in modules
    assert "vtorque.vm.lifecycle" not in modules and "vtorque.vm.host" not in modules


def test_a_node_withdraws_only_its_own_status_and_keeps_the_pieces(config: Any,
                                                                    no_down: None) -> None:
    addresses.allocate(config, JOB, 2)
    handoff.publish(config, JOB, handoff.NodeStatus("n1", handoff.READY))
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY))
    assert teardown.teardown(JOB, config) == (True, "")
    assert handoff.read(config, JOB, "n1") is None
    assert handoff.read(config, JOB, "n2").state == handoff.READY
    # n2 may still run guests on these addresses: the block stays, whoever n1 is.
    assert addresses.allocated_jobs(config) == [JOB]


def test_the_last_node_out_frees_the_job_wide_pieces(config: Any, no_down: None) -> None:
    addresses.allocate(config, JOB, 2)
    addresses.allocate(config, "56.head", 2)
    handoff.publish(config, JOB, handoff.NodeStatus("n1", handoff.READY))
    assert teardown.teardown(JOB, config) == (True, "")
    assert addresses.allocated_jobs(config) == ["56.head"]
    assert not os.path.exists(handoff.job_dir(config, JOB))


def test_addresses_that_no_node_holds_are_released(config: Any, no_down: None) -> None:
    addresses.allocate(config, JOB, 2)
    assert teardown.teardown(JOB, config) == (True, "")
    assert addresses.allocated_jobs(config) == []


def test_local_state_goes_through_lifecycle_down(config: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def down(job_id: str, cfg: Any) -> list[str]:
        calls.append(job_id)
        os.rmdir(paths(cfg).job_dir)
        return ["vtorque-x-0"]
    monkeypatch.setattr(lifecycle, "down", down)
    os.makedirs(paths(config).job_dir)
    assert teardown.teardown(JOB, config) == (True, "")
    assert calls == [JOB]
    assert "1 guest(s) destroyed on n1" in Path(config.log_file).read_text()


def test_failing_down_takes_the_node_offline(config: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def down(job_id: str, cfg: Any) -> list[str]:
        raise TeardownError(job_id, ["guest vtorque-x-0 still exists after destroy"])
    monkeypatch.setattr(lifecycle, "down", down)
    addresses.allocate(config, JOB, 1)
    os.makedirs(paths(config).job_dir)
    offlined: list[tuple[str, str]] = []
    ok, message = teardown.teardown(JOB, config,
                                    offline=lambda node, note: offlined.append((node, note)))
    assert not ok
    assert message.startswith(f"vtorque: teardown of job {JOB} on n1 incomplete: ")
    assert "still exists after destroy" in message
    assert "offline failed" not in message
    assert offlined == [("n1", f"job {JOB} teardown incomplete; see {config.log_file}")]
    # The block is not released while a guest may still use it.
    assert addresses.allocated_jobs(config) == [JOB]
    log = Path(config.log_file).read_text()
    assert "incomplete" in log and "node n1 taken offline" in log


def test_failing_offline_is_reported_too(config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(job_id: str, cfg: Any) -> list[str]:
        raise NodeError("cannot connect to libvirt")
    monkeypatch.setattr(lifecycle, "down", down)
    os.makedirs(paths(config).job_dir)

    def offline(node: str, note: str) -> None:
        raise NodeError("pbsnodes: cannot connect to server")
    ok, message = teardown.teardown(JOB, config, offline=offline)
    assert not ok
    assert "cannot connect to libvirt" in message
    assert message.endswith("; taking the node offline failed too: "
                            "pbsnodes: cannot connect to server")


def test_failing_down_without_offline_callback(config: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def down(job_id: str, cfg: Any) -> list[str]:
        raise NodeError("boom")
    monkeypatch.setattr(lifecycle, "down", down)
    os.makedirs(paths(config).job_dir)
    ok, message = teardown.teardown(JOB, config)
    assert not ok and message.endswith("incomplete: boom")


def test_sister_withdraws_its_status_published_under_the_fqdn(config: Any,
                                                              no_down: None) -> None:
    handoff.publish(config, JOB, handoff.NodeStatus("n1.cluster", handoff.READY))
    assert teardown.teardown(JOB, config) == (True, "")
    assert handoff.read(config, JOB, "n1.cluster") is None


# --- the job's mark on this node (vtorque.markers) -----------------------------------------

def test_a_marked_job_with_nothing_left_here_loses_its_mark(config: Any,
                                                            no_down: None) -> None:
    """Nothing to tear down (say the prologue marked the job and then failed before
    making anything): the mark goes, so the next epilogue of the id costs no Python."""
    markers.mark(config, JOB)
    markers.mark(config, "56.head")
    assert teardown.teardown(JOB, config) == (True, "")
    assert markers.jobs(config) == ["56.head"]
    assert teardown.teardown(JOB, config) == (True, "")      # twice: fine


def test_a_completed_teardown_removes_the_mark(config: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def down(job_id: str, cfg: Any) -> list[str]:
        seen.append(markers.marked(cfg, job_id))     # still there while guests may be
        os.rmdir(paths(cfg).job_dir)
        return ["vtorque-x-0"]
    monkeypatch.setattr(lifecycle, "down", down)
    markers.mark(config, JOB)
    os.makedirs(paths(config).job_dir)
    addresses.allocate(config, JOB, 1)
    handoff.publish(config, JOB, handoff.NodeStatus("n1", handoff.READY))
    assert teardown.teardown(JOB, config) == (True, "")
    assert seen == [True]
    assert not markers.marked(config, JOB)


@pytest.mark.parametrize("where", ["down", "leave"])
def test_a_failed_teardown_keeps_the_mark(config: Any, monkeypatch: pytest.MonkeyPatch,
                                          where: str) -> None:
    from vtorque.cluster import jobwide

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise NodeError("cannot connect to libvirt" if where == "down" else "lock busy")
    if where == "down":
        monkeypatch.setattr(lifecycle, "down", broken)
        os.makedirs(paths(config).job_dir)
    else:
        monkeypatch.setattr(jobwide, "leave", broken)
        handoff.publish(config, JOB, handoff.NodeStatus("n1", handoff.READY))
    markers.mark(config, JOB)
    ok, _ = teardown.teardown(JOB, config, offline=lambda node, note: None)
    assert not ok
    assert markers.marked(config, JOB)


def test_a_mark_stays_while_anything_of_the_job_is_left(config: Any,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """lifecycle.down returned, yet a file of the job is still here: the mark stays (the
    next epilogue or the reaper looks again)."""
    monkeypatch.setattr(lifecycle, "down", lambda job_id, cfg: [])
    markers.mark(config, JOB)
    os.makedirs(paths(config).ramdisk_dir)
    assert teardown.teardown(JOB, config)[0]
    assert markers.marked(config, JOB)
    assert teardown.forget(JOB, config) is False


def test_a_job_that_was_never_marked_gets_no_mark_and_no_directory(config: Any,
                                                                   no_down: None) -> None:
    assert teardown.teardown(JOB, config) == (True, "")
    assert teardown.forget(JOB, config) is True
    assert not os.path.exists(config.state_dir)


def test_the_reapers_and_the_admins_clean_remove_the_mark(config: Any,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """clean_node is the one way a job leaves a node (epilogue, reaper, `vtorque vm
    down`): each completed one removes the mark."""
    monkeypatch.setattr(lifecycle, "down", lambda job_id, cfg: [])
    markers.mark(config, JOB)
    assert teardown.clean_node(JOB, config, domains=True) == []
    assert not markers.marked(config, JOB)
