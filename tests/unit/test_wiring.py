"""The prologue's and the epilogue's wiring, for every batch system through its own hook
(tests/unit/hook_sites.py, stand-in commands): a VM job's mark on the node
(vtorque.markers) made before anything of the job and removed only once nothing is left,
never a mark for a job without VMs; and the request held against what the batch system
allocated the job on the node (request.check_fits_allocation), in each scheduler's own
record format. No guest is booted: guests.bring_up is a recorder."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.standins import install
from tests.unit import hook_sites
from tests.unit.hook_sites import Guests, Site
from vtorque import markers
from vtorque.cluster import handoff
from vtorque.errors import TeardownError
from vtorque.journal import JobPaths

SMALL = "vcpus=1;ram=256M"      # fits what every stand-in allocates on a node
BIG = "vcpus=8;ram=32G"         # the case: far beyond 1 core and 1 GB


# The fixtures and helper every hook suite shares.
site = hook_sites.site
guests = hook_sites.guests
config = hook_sites.site_config


def ready(site: Site, node: str) -> None:
    handoff.publish(config(site), site.job_id, handoff.NodeStatus(node, handoff.READY, run=1))


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    return lines[0]


def set_record(site: Site, vm: str | None, **changes: Any) -> None:
    """The site's job, its record changed in the scheduler's own terms."""
    record = site.record(vm, "alice", 1, ("n1", "n2"))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(record.get(key), dict):
            record[key] = {**record[key], **value}
        else:
            record[key] = value
    site.db = install(site.scheduler, site.bin_dir, jobs={site.job_id: record})


# --- marks ---------------------------------------------------------------------------------

def test_a_job_without_vms_is_never_marked(site: Site, no_libvirt: None) -> None:
    site.set_job(vm=None)
    for node in ("n1", "n2"):
        assert site.verdict(site.start(node)) == "run"
        assert not markers.marked(config(site), site.job_id)
    for node in ("n1", "n2"):
        assert site.end(node) == 0
    assert not os.path.exists(site.tmp / "state")


def test_a_vm_jobs_start_marks_it_before_its_guests_and_its_end_unmarks_it(
        site: Site, guests: Guests) -> None:
    site.set_job(vm=SMALL)
    ready(site, "n2")
    assert site.verdict(site.start("n1")) == "run"
    assert [c["marked"] for c in guests.calls] == [True]
    assert markers.jobs(config(site)) == [site.job_id]
    assert site.end("n1") == 0
    assert not markers.marked(config(site), site.job_id)


def test_a_sisters_start_marks_the_job_too(site: Site, guests: Guests) -> None:
    site.set_job(vm=SMALL)
    site.start("n2")
    assert guests.calls and guests.calls[0]["marked"]
    assert markers.marked(config(site), site.job_id)


def test_the_end_of_a_marked_job_with_nothing_left_removes_the_mark(
        site: Site, no_libvirt: None) -> None:
    """Say the prologue marked the job, then the node crashed before making anything."""
    site.set_job(vm=SMALL)
    markers.mark(config(site), site.job_id)
    assert site.end("n1") == 0
    assert not markers.marked(config(site), site.job_id)
    assert site.programs() == []                 # still nothing asked of the server


def test_a_failed_teardown_keeps_the_mark_until_one_completes(
        site: Site, guests: Guests, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtorque.vm import lifecycle
    site.set_job(vm=SMALL)
    ready(site, "n2")
    assert site.verdict(site.start("n1")) == "run"
    cfg = config(site)
    job_dir = JobPaths.for_job(site.job_id, cfg.state_dir, cfg.ramdisk_dir).job_dir
    os.makedirs(job_dir)                         # what the real guests leave here

    def stuck(job_id: str, cfg: Any) -> list[str]:
        raise TeardownError(job_id, ["guest vt-0 still exists after destroy"])
    monkeypatch.setattr(lifecycle, "down", stuck)
    assert site.end("n1") == site.end_offlined
    assert markers.marked(cfg, site.job_id)
    assert site.end("n1") == site.end_offlined   # the next epilogue looks again
    assert markers.marked(cfg, site.job_id)

    def down(job_id: str, cfg: Any) -> list[str]:
        os.rmdir(job_dir)
        return ["vt-0"]
    monkeypatch.setattr(lifecycle, "down", down)
    assert site.end("n1") == 0
    assert not markers.marked(cfg, site.job_id)


def test_a_refused_start_keeps_the_mark_until_the_end(site: Site, guests: Guests) -> None:
    """A refused request publishes its failure (job-wide state): the job is marked, and
    the end with nothing left removes the mark."""
    set_record(site, BIG)
    site.start("n1")
    assert markers.marked(config(site), site.job_id)
    assert site.end("n1") == 0
    assert not markers.marked(config(site), site.job_id)
    assert not os.path.lexists(handoff.job_dir(config(site), site.job_id))


# --- the request against the job's allocation on the node ----------------------------------

# What each batch system allocates the job on each node: 1 core and 1 GB.
ONE_CORE_ONE_GIG = {
    "torque": {"exec_host": "n1/0+n2/0", "Resource_List": {"mem": "2gb"}},   # per job
    "openpbs": {"exec_host": "n1/0*1+n2/0*1",
                "exec_vnode": "(n1:ncpus=1:mem=1gb)+(n2:ncpus=1:mem=1gb)"},
    # Mem: MiB per node (the stand-in prints Mem=1000 today, whatever the record says).
    "slurm": {"CPU_IDs": {"n1": "0", "n2": "0"}, "NumCPUs": 2,
              "Mem": {"n1": 1000, "n2": 1000}},
}
MEMORY = {"torque": "1G there (Resource_List.mem)", "openpbs": "1G there (exec_vnode)",
          "slurm": "1000M there (Mem)"}
CORES_FROM = {"torque": "exec_host", "openpbs": "exec_vnode", "slurm": "CPU_IDs"}


@pytest.mark.parametrize("node", ["n1", "n2"])
def test_a_request_beyond_the_jobs_allocation_is_the_users_error(
        site: Site, guests: Guests, node: str, capsys: pytest.CaptureFixture) -> None:
    set_record(site, BIG, **ONE_CORE_ONE_GIG[site.scheduler])
    status = site.start(node)
    assert guests.calls == []                        # nothing started
    line = one_line(capsys.readouterr().err)
    assert f"job {site.job_id} refused" in line
    assert (f"needs 8 cores on node {node}, but the batch system allocated this job 1 "
            f"there ({CORES_FROM[site.scheduler]})") in line
    assert "Traceback" not in line
    assert site.offline() == []                      # the node stays in service
    if node == "n1":
        assert site.verdict(status) == "abort"
    published = handoff.read(config(site), site.job_id, node)
    assert published.state == handoff.FAILED and published.user_fault and published.clean


def test_memory_beyond_the_jobs_allocation_is_the_users_error(
        site: Site, guests: Guests, capsys: pytest.CaptureFixture) -> None:
    allocation = dict(ONE_CORE_ONE_GIG[site.scheduler])
    set_record(site, "vcpus=1;ram=32G", **allocation)
    assert site.verdict(site.start("n1")) == "abort"
    line = one_line(capsys.readouterr().err)
    assert "on node n1, but the batch system allocated this job " + MEMORY[site.scheduler] \
        in line
    assert "for QEMU" in line and guests.calls == [] and site.offline() == []


def test_a_request_within_the_allocation_starts(site: Site, guests: Guests) -> None:
    set_record(site, "vcpus=1;ram=512M", **ONE_CORE_ONE_GIG[site.scheduler])
    ready(site, "n2")
    assert site.verdict(site.start("n1")) == "run"
    assert [(c["vcpus"], c["ram"]) for c in guests.calls] == [(1, 512)]


UNREADABLE = {
    "torque": {"Resource_List": {"mem": "lots"}},
    "openpbs": {"exec_vnode": "(n1:ncpus=x)+(n2:ncpus=1)"},
    "slurm": {"CPU_IDs": {"n1": "0-", "n2": "0"}},
}


def test_an_unreadable_allocation_is_one_line_never_a_traceback(
        site: Site, guests: Guests, capsys: pytest.CaptureFixture) -> None:
    """Torque's XML and OpenPBS's JSON are unambiguous: what vtorque cannot read there is
    the node's problem (requeue, the node out of service). Slurm's text record is not: a
    detail line it cannot read may come from a job's own fields, so it refuses the job
    as an ambiguous record (batch/slurm_record.py) and keeps the node in service (a user
    must not be able to drain nodes)."""
    set_record(site, SMALL, **UNREADABLE[site.scheduler])
    status = site.start("n1")
    line = one_line(capsys.readouterr().err)
    assert "Traceback" not in line and "internal error" not in line
    assert guests.calls == []
    assert not markers.marked(config(site), site.job_id)     # nothing made: no mark
    if site.scheduler == "slurm":
        assert "unreadable allocation" in line and site.verdict(status) == "abort"
        assert site.offline() == []
    else:
        assert "cannot read what job" in line and "was allocated" in line
        assert site.verdict(status) == "requeue" and site.offline() == ["n1"]


def test_a_record_without_allocation_detail_falls_back_to_the_node(
        site: Site, guests: Guests, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A record that names no allocation for the node (an adapter's JobContext without
    allocations): the guests are checked against the node only, and the log says so."""
    import dataclasses
    import importlib

    from vtorque import hooks
    hook = type(importlib.import_module(hooks.HOOKS[site.scheduler]).HOOK)
    real = hook.read_job

    def without(self: Any, adapter: Any, job_id: str) -> Any:
        return dataclasses.replace(real(self, adapter, job_id), allocations=())
    monkeypatch.setattr(hook, "read_job", without)
    set_record(site, BIG, **ONE_CORE_ONE_GIG[site.scheduler])
    ready(site, "n2")
    assert site.verdict(site.start("n1")) == "run"
    assert [c["vcpus"] for c in guests.calls] == [8]
    assert "names no allocation for node n1; its guests are checked against the node " \
        "only" in caplog.text
