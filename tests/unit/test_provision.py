"""Unit tests of vtorque.prologue.provision: one node's prologue for any batch system, with
the guests replaced (guests.bring_up and lifecycle.down monkeypatched), so no libvirt is
needed; and of the Outcome it returns (vtorque.outcome)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vtorque.batch.base import JobContext, node_index
from vtorque.cluster import handoff
from vtorque.errors import HypervisorError, ImageError, NodeError, RequestError
from vtorque.mpi.hostfile import GuestEntry
from vtorque.mpi.sshkeys import KeyScope
from vtorque.outcome import ABORT, OTHER_NODES, REQUEUE, RUN, THIS_NODE, USER, Outcome
from vtorque import markers
from vtorque.prologue import guests, provision
from vtorque.vm import lifecycle

JOB = "31.head"


def context(nodes: tuple[str, ...] = ("n1", "n2"), vm: str | None = "vcpus=1",
            run_count: int = 1, user: str = "alice") -> JobContext:
    return JobContext(scheduler="torque", job_id=JOB, user=user, group="hpc",
                      job_name="vmjob", queue="batch", nodes=nodes,
                      slots=tuple(2 for _ in nodes), vm_request=vm, workdir="/home/alice",
                      run_count=run_count, created=1796170623, uid=1001)


@pytest.fixture
def config(make_config: Any, tmp_path: Path) -> Any:
    return make_config({"node_name": "n1", "log_file": str(tmp_path / "log" / "vt.log"),
                        "timeouts": {"provision": 0.3},
                        "batch": {"shared_state_dir": str(tmp_path / "shared"),
                                  "max_requeues": 2}})


@pytest.fixture
def sister_config(make_config: Any, tmp_path: Path) -> Any:
    return make_config({"node_name": "n2", "log_file": str(tmp_path / "log" / "vt.log"),
                        "batch": {"shared_state_dir": str(tmp_path / "shared")}})


class Recorder:
    """Fake bring_up / clean_node / write_user_files that record their calls."""

    def __init__(self, error: Exception | None = None):
        self.error = error
        self.up_calls: list[dict[str, Any]] = []
        self.cleaned: list[tuple[str, bool]] = []
        self.user_files: list[tuple[str, str, int]] = []

    def bring_up(self, job_id: str, request: Any, config: Any, *, user: str | None,
                 node_index: int = 0, node_count: int = 1, node: str | None = None,
                 run: int = 0, workdir: str | None = None, keys: Any = None,
                 job_cores: Any = None) -> Any:
        self.up_calls.append({"job": job_id, "request": request, "user": user,
                              "index": node_index, "count": node_count,
                              "workdir": workdir, "keys": keys})
        if self.error is not None:
            raise self.error
        vms = request.vms_per_node
        ranks = range(node_index * vms, node_index * vms + vms)
        result = lifecycle.UpResult(job_id, [
            lifecycle.Guest(job_id, r, f"vtorque-x-{r}", f"vt31-{r}", "running",
                            mac=f"52:54:00:00:00:{r:02x}", ready_seconds=1.2 + r,
                            address=f"10.0.0.{r + 5}") for r in ranks], seconds=1.5,
            image_name="testguest", image_digest="ab" * 32)
        everyone = [GuestEntry(r, f"vt31-{r}", None, request.vcpus)
                    for r in range(node_count * vms)]
        return result, everyone

    def down(self, job_id: str, config: Any) -> list[str]:
        self.cleaned.append((job_id, False))
        return []

    def write_user_files(self, job_id: str, config: Any, user: str, entries: list,
                         keys: Any, kind: str = "linux") -> str:
        self.user_files.append((job_id, user, len(entries)))
        return "/nowhere"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(guests, "bring_up", rec.bring_up)
    monkeypatch.setattr(guests, "write_user_files", rec.write_user_files)
    monkeypatch.setattr(lifecycle, "down", rec.down)
    return rec


# --- node_index -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,nodes,index", [
    ("n2", ("n1", "n2", "n3"), 1),
    ("n1", ("n1",), 0),
    ("n2", ("n1.c.org", "n2.c.org"), 1),           # short name, FQDNs in the job
    ("n2.c.org", ("n1", "n2"), 1),                 # FQDN here, short names in the job
    ("n1.c", ("n1.c", "n1.d"), 0),                 # exact wins over short-name matches
    ("node-07.x", ("node-7.x", "node-07"), 1),
])
def test_node_index_finds_this_node(name: str, nodes: tuple[str, ...], index: int) -> None:
    assert node_index(name, nodes) == index


@pytest.mark.parametrize("name,nodes", [
    ("n1", ("n1.a", "n1.b")),                      # ambiguous short name
    ("n3", ("n1", "n2")),
    ("n", ("n1", "n2")),                           # a prefix is not a short name
    ("n1", ()),
])
def test_node_index_refuses(name: str, nodes: tuple[str, ...]) -> None:
    with pytest.raises(NodeError, match=f"this node \\({name}\\) is not among"):
        node_index(name, nodes)


# --- the requeue limit -------------------------------------------------------------------

@pytest.mark.parametrize("fault", [THIS_NODE, OTHER_NODES])
@pytest.mark.parametrize("run_count,action", [(0, REQUEUE), (1, REQUEUE), (2, REQUEUE),
                                              (3, ABORT), (50, ABORT)])
def test_node_faults_requeue_until_max_requeues(fault: str, run_count: int,
                                                action: str) -> None:
    made = (Outcome.node_fault("vtorque: disk full", "n1") if fault == THIS_NODE
            else Outcome.others_fault("vtorque: disk full", ("n2",)))
    outcome = made.within_limit(run_count, 2)
    assert outcome.action == action and outcome.fault == fault
    assert outcome.final == (action == ABORT)
    assert outcome.message.startswith("vtorque: disk full")
    if action == ABORT:
        assert "batch.max_requeues=2" in outcome.message and "aborting" in outcome.message
        assert f"started {run_count} times" in outcome.message
    else:
        assert outcome.message == "vtorque: disk full"


def test_no_requeues_allowed() -> None:
    assert Outcome.node_fault("x", "n1").within_limit(1, 0).action == ABORT
    assert Outcome.node_fault("x", "n1").within_limit(0, 0).action == REQUEUE


def test_the_limit_never_touches_user_errors_or_success() -> None:
    for outcome in (Outcome.user_error("bad"), Outcome.run()):
        assert outcome.within_limit(99, 0) == outcome


# --- provision ----------------------------------------------------------------------------

def test_non_vm_job_runs_without_touching_anything(config: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("touched")
    monkeypatch.setattr(guests, "bring_up", boom)
    monkeypatch.setattr(handoff, "publish", boom)
    monkeypatch.setattr(handoff, "collect", boom)
    for vm in (None, ""):
        for ms in (True, False):
            assert provision.start(context(vm=vm), config,
                                       mother_superior=ms) == Outcome.run()
    assert not os.path.exists(config.batch.shared_state_dir)
    assert not os.path.exists(config.state_dir)


@pytest.mark.parametrize("error", [RequestError("-vm vcpus=9 exceeds", key="vcpus"),
                                   ImageError("image 'x' is not authorized")])
def test_user_error_aborts_and_publishes_a_user_fault(config: Any, fake: Recorder,
                                                      error: Exception) -> None:
    fake.error = error
    outcome = provision.start(context(), config, mother_superior=True)
    assert outcome.action == ABORT and outcome.fault == USER
    assert outcome.message == f"vtorque: job {JOB} refused: {error}"
    status = handoff.read(config, JOB, "n1")
    assert status.state == handoff.FAILED and status.user_fault
    assert status.reason == str(error)
    assert fake.cleaned == []


def test_invalid_request_is_refused_before_bring_up(config: Any, fake: Recorder) -> None:
    outcome = provision.start(context(vm="vcpus=0"), config, mother_superior=False)
    assert outcome.action == ABORT and "vcpus" in outcome.message
    assert fake.up_calls == []
    assert handoff.read(config, JOB, "n1").user_fault


@pytest.mark.parametrize("run_count", [1, 3])
def test_node_error_is_this_nodes_fault(config: Any, fake: Recorder, run_count: int) -> None:
    fake.error = HypervisorError("cannot connect to libvirt")
    outcome = provision.start(context(run_count=run_count), config, mother_superior=True)
    assert (outcome.action, outcome.fault, outcome.nodes) == (REQUEUE, THIS_NODE, ("n1",))
    assert "node n1 failed to start the job's guests: cannot connect to libvirt" \
        in outcome.message
    status = handoff.read(config, JOB, "n1")
    assert status.state == handoff.FAILED and not status.user_fault
    assert "cannot connect to libvirt" in status.reason


def test_this_node_not_in_the_job_requeues(config: Any, fake: Recorder) -> None:
    outcome = provision.start(context(nodes=("n7", "n8")), config, mother_superior=False)
    assert outcome.action == REQUEUE and "not among the job's nodes" in outcome.message
    assert outcome.fault == THIS_NODE
    assert fake.up_calls == []


def test_sister_success_runs_and_publishes_ready(sister_config: Any, fake: Recorder) -> None:
    outcome = provision.start(context(nodes=("n1.c", "n2.c"), vm="vcpus=2;vms_per_node=2"),
                                  sister_config, mother_superior=False)
    assert outcome == Outcome.run()
    assert fake.up_calls[0]["index"] == 1 and fake.up_calls[0]["count"] == 2
    assert fake.up_calls[0]["user"] == "alice"
    # The guests share the job's working directory; the keys are this job's alone.
    assert fake.up_calls[0]["workdir"] == "/home/alice"
    assert fake.up_calls[0]["keys"] == KeyScope(JOB, 1001, 1796170623)
    assert fake.up_calls[0]["request"].vcpus == 2
    # Published under the job's spelling of this node's name.
    assert handoff.read(sister_config, JOB, "n2") is None
    status = handoff.read(sister_config, JOB, "n2.c")
    assert status.state == handoff.READY
    assert [g["rank"] for g in status.guests] == [2, 3]
    assert status.guests[0] == {"rank": 2, "name": "vtorque-x-2", "hostname": "vt31-2",
                                "mac": "52:54:00:00:00:02", "kind": "linux",
                                "address": "10.0.0.7", "ready_seconds": 3.2,
                                "image": "testguest", "digest": "ab" * 32,
                                "started": "boot"}
    assert fake.user_files == [] and fake.cleaned == []


def test_mother_superior_waits_for_all_then_writes_the_user_files(config: Any,
                                                                  fake: Recorder) -> None:
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY, run=1, guests=[
        {"rank": 2, "ready_seconds": 7.25}]))
    outcome = provision.start(context(), config, mother_superior=True)
    # The job's record: this node's image and digest, the slowest guest's boot.
    assert outcome == Outcome.run(note=f"image=testguest sha256={'ab' * 32} boot=7.2s "
                                       "nodes=2")
    assert fake.user_files == [(JOB, "alice", 2)]
    assert fake.cleaned == []


@pytest.mark.parametrize("run_count", [1, 3])
def test_mother_superior_rolls_back_when_a_sister_fails(config: Any, fake: Recorder,
                                                        run_count: int) -> None:
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.FAILED, "disk full on n2",
                                                    run=run_count))
    outcome = provision.start(context(run_count=run_count), config, mother_superior=True)
    assert (outcome.action, outcome.fault, outcome.nodes) == (REQUEUE, OTHER_NODES, ("n2",))
    assert "n2: disk full on n2" in outcome.message
    assert [job for job, _ in fake.cleaned] == [JOB]
    assert fake.user_files == []


def test_mother_superior_aborts_when_a_sister_refused_the_request(config: Any,
                                                                  fake: Recorder) -> None:
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.FAILED,
                                                    "image 'x' is not authorized",
                                                    user_fault=True, run=1))
    outcome = provision.start(context(run_count=1), config, mother_superior=True)
    assert outcome.action == ABORT
    assert outcome.message == f"vtorque: job {JOB} refused: n2: image 'x' is not authorized"
    assert [job for job, _ in fake.cleaned] == [JOB]


def test_mother_superior_requeues_when_a_sister_stays_silent(config: Any,
                                                             fake: Recorder) -> None:
    outcome = provision.start(context(), config, mother_superior=True)
    assert (outcome.action, outcome.fault, outcome.nodes) == (REQUEUE, OTHER_NODES, ("n2",))
    assert "n2: node n2 did not report its guests within 0.3 s" in outcome.message
    assert [job for job, _ in fake.cleaned] == [JOB]


def test_failing_user_files_roll_back(config: Any, fake: Recorder,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user(*args: Any, **kwargs: Any) -> str:
        raise KeyError("getpwnam(): name not found: 'alice'")
    monkeypatch.setattr(guests, "write_user_files", no_user)
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY, run=1))
    outcome = provision.start(context(), config, mother_superior=True)
    assert (outcome.action, outcome.fault, outcome.nodes) == (REQUEUE, THIS_NODE, ("n1",))
    assert "n1: cannot write the job's files" in outcome.message
    assert [job for job, _ in fake.cleaned] == [JOB]


def test_failing_rollback_still_reports_the_first_failure(config: Any, fake: Recorder,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise NodeError("libvirtd gone")
    monkeypatch.setattr(lifecycle, "down", broken)
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.FAILED, "no kvm", run=1))
    outcome = provision.start(context(), config, mother_superior=True)
    assert outcome.action == REQUEUE and "n2: no kvm" in outcome.message


def test_the_two_steps_can_run_in_two_events(config: Any, fake: Recorder,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenPBS: every node provisions in execjob_begin (never deciding), the mother
    superior assembles in execjob_prologue without starting its guests again."""
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY, run=1))
    assert provision.start(context(), config, mother_superior=True,
                           assemble=False) == Outcome.run()
    assert len(fake.up_calls) == 1 and fake.user_files == []
    entries = [GuestEntry(r, f"vt31-{r}", None, 1) for r in range(2)]
    monkeypatch.setattr(provision, "_job_entries", lambda ctx, cfg: entries)
    assert provision.start(context(), config, mother_superior=True,
                           provision_here=False).action == RUN
    assert len(fake.up_calls) == 1 and fake.user_files == [(JOB, "alice", 2)]


def test_the_mother_superiors_own_failure_seen_when_assembling_is_its_fault(
        config: Any, fake: Recorder) -> None:
    fake.error = HypervisorError("no kvm")
    provision.start(context(), config, mother_superior=True, assemble=False)
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY, run=1))
    outcome = provision.start(context(), config, mother_superior=True, provision_here=False)
    assert (outcome.action, outcome.fault, outcome.nodes) == (REQUEUE, THIS_NODE, ("n1",))
    assert fake.cleaned == []                   # n1 rolled back when it failed


def test_mother_superior_refuses_a_job_whose_nodes_mix_rdma_transports(
        config: Any, fake: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fake.bring_up

    def with_sriov(*args: Any, **kwargs: Any) -> Any:
        result, everyone = real(*args, **kwargs)
        result.rdma = "sriov"
        return result, everyone

    monkeypatch.setattr(guests, "bring_up", with_sriov)
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY, run=1,
                                                    rdma="soft-roce"))
    outcome = provision.start(context(vm="vrdma=yes"), config, mother_superior=True)
    assert outcome.action == ABORT
    assert "different RDMA transports (n1 sriov, n2 soft-roce)" in outcome.message
    assert [job for job, _ in fake.cleaned] == [JOB]
    assert fake.user_files == []
    assert handoff.read(config, JOB, "n1").rdma == "sriov"


# --- the job's mark on this node (vtorque.markers) -----------------------------------------

def _made(config: Any) -> list[str]:
    """Everything under the node's state, ramdisk and shared directories but the marks."""
    found = []
    for root in (config.state_dir, config.ramdisk_dir, config.batch.shared_state_dir):
        for where, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != markers.MARK_DIR]
            found += [os.path.join(where, n) for n in dirs + files]
    return sorted(found)


class MarkOrder:
    """Every step that makes something for the job records whether the mark was there."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, config: Any, fake: Recorder):
        self.config = config
        self.steps: list[tuple[str, Any]] = []
        real_mark, real_publish, real_up = markers.mark, handoff.publish, fake.bring_up

        def mark(cfg: Any, job_id: str) -> None:
            self.steps.append(("mark", _made(cfg)))
            real_mark(cfg, job_id)

        def publish(cfg: Any, job_id: str, status: Any) -> None:
            self.steps.append((f"publish {status.state}", markers.marked(cfg, job_id)))
            real_publish(cfg, job_id, status)

        def bring_up(job_id: str, request: Any, cfg: Any, **kwargs: Any) -> Any:
            self.steps.append(("bring_up", markers.marked(cfg, job_id)))
            return real_up(job_id, request, cfg, **kwargs)

        monkeypatch.setattr(markers, "mark", mark)
        monkeypatch.setattr(handoff, "publish", publish)
        monkeypatch.setattr(guests, "bring_up", bring_up)


def test_a_vm_job_is_marked_before_anything_is_made_for_it(config: Any, fake: Recorder,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    order = MarkOrder(monkeypatch, config, fake)
    outcome = provision.start(context(), config, mother_superior=False)
    assert outcome == Outcome.run()
    assert order.steps == [("mark", []), ("bring_up", True), ("publish ready", True)]
    assert markers.marked(config, JOB) and markers.jobs(config) == [JOB]


@pytest.mark.parametrize("error", [ImageError("image 'x' is not authorized"),
                                   HypervisorError("cannot connect to libvirt")])
def test_a_failed_start_is_published_after_the_mark_then_drops_it_when_nothing_is_left(
        config: Any, fake: Recorder, monkeypatch: pytest.MonkeyPatch,
        error: Exception) -> None:
    """The failed status goes out while the job is marked; a node that rolled back to
    nothing then drops its mark itself: the real Torque runs no epilogue on a sister
    after a failed start, and the mark would stay for ever."""
    order = MarkOrder(monkeypatch, config, fake)
    fake.error = error
    provision.start(context(), config, mother_superior=False)
    assert order.steps == [("mark", []), ("bring_up", True), ("publish failed", True)]
    assert not markers.marked(config, JOB)


def test_a_failed_start_that_leaves_something_keeps_its_mark(
        config: Any, fake: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a failed rollback left (here: the job's directory) is the epilogue's or the
    reaper's to find: the mark stays."""
    from vtorque.journal import JobPaths

    def fail_leaving_state(*args: Any, **kwargs: Any) -> Any:
        os.makedirs(JobPaths.for_job(JOB, config.state_dir, config.ramdisk_dir).job_dir)
        raise HypervisorError("libvirt refused to start the guest: test")
    monkeypatch.setattr(guests, "bring_up", fail_leaving_state)
    provision.start(context(), config, mother_superior=False)
    assert markers.marked(config, JOB)
    assert handoff.read(config, JOB, "n1").clean is False


def test_a_request_refused_on_the_node_is_published_after_the_mark(
        config: Any, fake: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    order = MarkOrder(monkeypatch, config, fake)
    outcome = provision.start(context(vm="vcpus=0"), config, mother_superior=False)
    assert outcome.action == ABORT
    assert order.steps == [("mark", []), ("publish failed", True)]


def test_a_node_that_cannot_mark_the_job_makes_nothing(config: Any, fake: Recorder) -> None:
    os.makedirs(config.state_dir)
    os.chmod(config.state_dir, 0o777)          # not trusted: no mark can be made there
    outcome = provision.start(context(), config, mother_superior=False)
    assert (outcome.action, outcome.fault, outcome.nodes) == (REQUEUE, THIS_NODE, ("n1",))
    assert "\n" not in outcome.message
    assert outcome.message.startswith(f"vtorque: node n1 failed to start the job's guests: "
                                      f"cannot mark job {JOB} on this node: ")
    assert "writable by group or others" in outcome.message
    assert fake.up_calls == []
    assert handoff.read(config, JOB, "n1") is None          # not even a failed status
    assert not os.path.exists(handoff.job_dir(config, JOB))
    assert os.listdir(config.state_dir) == []


def test_the_mother_superior_that_cannot_mark_does_not_assemble(config: Any,
                                                               fake: Recorder) -> None:
    os.makedirs(config.state_dir)
    os.chmod(config.state_dir, 0o777)
    handoff.publish(config, JOB, handoff.NodeStatus("n2", handoff.READY, run=1))
    outcome = provision.start(context(), config, mother_superior=True)
    assert outcome.fault == THIS_NODE and "cannot mark" in outcome.message
    assert fake.up_calls == [] and fake.user_files == []


def test_a_job_without_vms_is_never_marked(config: Any, fake: Recorder) -> None:
    for vm in (None, ""):
        for ms in (True, False):
            assert provision.start(context(vm=vm), config, mother_superior=ms).action == RUN
    assert not markers.marked(config, JOB) and markers.jobs(config) == []
    assert _made(config) == []


# --- pinning to the job's own cores --------------------------------------------------------

class _PinCtx:
    """The two things provision.pinning reads of a JobContext."""

    def __init__(self, allocation):
        self.job_id, self.scheduler, self.nodes = "77", "slurm", ["n1", "n2"]
        self._allocation = allocation

    def allocation(self, name):
        return self._allocation


def test_guests_get_the_cores_the_batch_system_gave_the_job(cfg) -> None:
    """Every core of the job here, sorted, pinned or not: the guests take their shares
    by NUMA node (vm/numa.py)."""
    from vtorque.batch.allocation import NodeAllocation
    from vtorque.prologue.provision import job_cores
    from vtorque.request import parse_request
    request = parse_request("vcpus=2,vms_per_node=1,vcpu_pinning=yes", cfg)
    ctx = _PinCtx(NodeAllocation(cpus=3, cores=(9, 4, 6), cores_from="CPU_IDs"))
    assert job_cores(ctx, cfg, request, 0) == (request, (4, 6, 9))
    unpinned = parse_request("vcpus=2,vcpu_pinning=no", cfg)
    assert job_cores(ctx, cfg, unpinned, 0) == (unpinned, (4, 6, 9))


def test_pinning_without_the_jobs_core_ids_runs_unpinned(cfg, caplog) -> None:
    """A record that names no cores (OpenPBS without a cgroup hook): no guess that could
    land on another job's cores."""
    from vtorque.batch.allocation import NodeAllocation
    from vtorque.prologue.provision import job_cores
    from vtorque.request import parse_request
    request = parse_request("vcpus=2,vcpu_pinning=yes", cfg)
    pinned, cores = job_cores(_PinCtx(NodeAllocation(cpus=2)), cfg, request, 1)
    assert (pinned.vcpu_pinning, cores) == (False, None)
    unasked = parse_request("vcpus=2,vcpu_pinning=no", cfg)
    assert job_cores(_PinCtx(NodeAllocation(cpus=2)), cfg, unasked, 0) == (unasked, None)
    assert job_cores(_PinCtx(None), cfg, request, 0) == (request, None)


def test_pinning_more_vcpus_than_the_jobs_cores_is_the_users_error(cfg) -> None:
    from vtorque.batch.allocation import NodeAllocation
    from vtorque.errors import RequestError
    from vtorque.prologue.provision import job_cores
    from vtorque.request import parse_request
    request = parse_request("vcpus=2,vms_per_node=2,vcpu_pinning=yes", cfg)
    with pytest.raises(RequestError, match="need 4 cores on node n1, but the batch "
                                           "system gave this job 2 there"):
        job_cores(_PinCtx(NodeAllocation(cpus=2, cores=(0, 1))), cfg, request, 0)
