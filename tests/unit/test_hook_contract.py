"""The hook contract (vtorque/hooks/base.py), every case for every batch system: Torque,
OpenPBS and Slurm through their stand-in commands (tests/standins) and their own way of
calling the hook (tests/unit/hook_sites.py). No guest is ever booted: the guests of a
node are a recorder (guests.bring_up) or nothing at all (no_libvirt)."""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from tests.unit import hook_sites
from tests.unit.hook_sites import SITES, Guests, Site
from vtorque.cluster import handoff
from vtorque.errors import HypervisorError, ImageError, TeardownError


# The fixtures and helper every hook suite shares.
site = hook_sites.site
guests = hook_sites.guests
config = hook_sites.site_config


def publish(site: Site, node: str, ok: bool = True, reason: str = "libvirtd is down",
            user_fault: bool = False) -> None:
    status = (handoff.NodeStatus(node, handoff.READY, run=1) if ok else
              handoff.NodeStatus(node, handoff.FAILED, reason, user_fault=user_fault, run=1))
    handoff.publish(config(site), site.job_id, status)


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    return lines[0]


# --- jobs without VMs -------------------------------------------------------------------------

@pytest.mark.parametrize("node", ["n1", "n2"])
def test_a_job_without_vms_runs_after_one_query(site: Site, no_libvirt: None, node: str,
                                                capsys: pytest.CaptureFixture) -> None:
    site.set_job(vm=None)
    assert site.verdict(site.start(node)) == "run"
    assert site.programs() == [site.query] * site.start_queries[node]
    assert capsys.readouterr().err == ""
    assert not os.path.exists(site.tmp / "shared")
    assert not os.path.exists(site.tmp / "state")


def test_the_end_of_a_job_without_state_asks_nobody(site: Site, no_libvirt: None) -> None:
    site.set_job(vm=None)
    for node in ("n1", "n2"):
        assert site.end(node) == 0
    assert site.programs() == []
    assert not os.path.exists(site.tmp / "state")


# --- the user's errors: abort, the node stays in service ------------------------------------

@pytest.mark.parametrize("request_text", ["vcpus=100000", "img=../../etc/passwd", "bogus=1",
                                          "ram=1T", "vcpus=\u0661"])
def test_an_invalid_request_aborts_and_keeps_the_node(site: Site, no_libvirt: None,
                                                      request_text: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    site.set_job(vm=request_text)
    assert site.verdict(site.start("n1")) == "abort"
    assert site.offline() == []
    assert f"job {site.job_id} refused" in one_line(capsys.readouterr().err)


def test_an_image_withdrawn_after_submission_is_the_users_error(
        site: Site, guests: Guests, capsys: pytest.CaptureFixture) -> None:
    guests.error = ImageError("image 'deb12': not in the catalog")
    site.set_job(vm="img=deb12")
    assert site.verdict(site.start("n1")) == "abort"
    assert site.offline() == []
    assert "not in the catalog" in capsys.readouterr().err


def test_an_owner_the_server_does_not_confirm_is_refused(site: Site, no_libvirt: None,
                                                         capsys: pytest.CaptureFixture) -> None:
    site.set_job(user="alice")
    assert site.verdict(site.start("n1", user="mallory")) == "abort"
    err = one_line(capsys.readouterr().err)
    assert "'mallory'" in err and "'alice'" in err
    assert site.offline() == []


# --- node faults: requeue, bounded -----------------------------------------------------------

def test_an_unknown_job_is_a_node_fault(site: Site, no_libvirt: None,
                                        capsys: pytest.CaptureFixture) -> None:
    site.no_job()
    assert site.verdict(site.start("n1")) == "requeue"
    assert "unknown to the batch server" in capsys.readouterr().err


def test_an_unreachable_server_is_a_node_fault(site: Site, no_libvirt: None,
                                               capsys: pytest.CaptureFixture) -> None:
    site.server_down()
    assert site.verdict(site.start("n1")) == "requeue"
    assert "cannot connect to server head" in capsys.readouterr().err


@pytest.mark.parametrize("runs,verdict", [(1, "requeue"), (3, "requeue"), (4, "abort"),
                                          (40, "abort")])
def test_node_faults_requeue_until_max_requeues(site: Site, guests: Guests, runs: int,
                                                verdict: str,
                                                capsys: pytest.CaptureFixture) -> None:
    guests.error = HypervisorError("cannot connect to libvirt")
    site.set_job(runs=runs)
    assert site.verdict(site.start("n1")) == verdict
    err = capsys.readouterr().err
    assert "cannot connect to libvirt" in err
    if verdict == "abort":
        assert "batch.max_requeues=3" in err
    status = handoff.read(config(site), site.job_id, "n1")
    assert status.state == handoff.FAILED and not status.user_fault
    assert site.offline() == ["n1"]                    # its own fault: out of service


def test_the_mother_superior_starts_the_job_when_every_node_is_ready(
        site: Site, guests: Guests) -> None:
    site.set_job()
    publish(site, "n2")
    assert site.verdict(site.start("n1")) == "run"
    assert [c["index"] for c in guests.calls] == [0]


def test_another_nodes_fault_requeues_without_offlining_this_node(
        site: Site, guests: Guests, capsys: pytest.CaptureFixture) -> None:
    site.set_job()
    publish(site, "n2", ok=False, reason="disk full on n2")
    assert site.verdict(site.start("n1")) == "requeue"
    assert "n2: disk full on n2" in capsys.readouterr().err
    assert "n1" not in site.offline()


def test_another_nodes_user_error_aborts(site: Site, guests: Guests) -> None:
    site.set_job()
    publish(site, "n2", ok=False, reason="image 'x' is not authorized", user_fault=True)
    assert site.verdict(site.start("n1")) == "abort"
    assert site.offline() == []


def test_a_sisters_own_fault_takes_it_offline(site: Site, guests: Guests,
                                              capsys: pytest.CaptureFixture) -> None:
    """A sister at fault reports it and leaves the service; whether it also fails its own
    start is the scheduler's rule (Torque and OpenPBS: never, the mother superior
    decides; Slurm: its Prolog fails, and Slurm requeues the job held)."""
    guests.error = HypervisorError("cannot connect to libvirt")
    site.set_job()
    assert site.verdict(site.start("n2")) == site.sister_fault
    assert site.offline() == ["n2"]
    status = handoff.read(config(site), site.job_id, "n2")
    assert status.state == handoff.FAILED and not status.user_fault
    assert "cannot connect to libvirt" in capsys.readouterr().err


@pytest.mark.parametrize("error", [HypervisorError("cannot connect to libvirt"),
                                   ImageError("image 'deb12': not in the catalog")])
def test_a_failed_start_leaves_nothing_when_only_the_mother_superior_ends(
        site: Site, guests: Guests, error: Exception) -> None:
    """Real Torque runs no epilogue.parallel on a sister whose part of a failed start
    ended: the mother superior's end alone must leave nothing job-wide."""
    guests.error = error
    site.set_job()
    site.start("n2")
    guests.error = None
    assert site.verdict(site.start("n1")) != "run"
    site.end("n1")
    assert not os.path.lexists(handoff.job_dir(config(site), site.job_id))


def test_the_jobs_record_says_what_it_runs_on_or_why_it_did_not_start(
        site: Site, guests: Guests) -> None:
    """Where the scheduler keeps the job (Torque's and OpenPBS's comment, Slurm's
    AdminComment), vtorque leaves the image and digest of a start, or the reason of a
    refusal, for the owner and for accounting afterwards."""
    site.set_job()
    publish(site, "n2")
    assert site.verdict(site.start("n1")) == "run"
    assert site.job_record() == "vtorque: image=testguest sha256=" + "0" * 64 + \
        " boot=0.5s nodes=2"
    guests.error = ImageError("image 'deb12': not in the catalog")
    site.set_job(vm="img=deb12")
    assert site.verdict(site.start("n1")) == "abort"
    assert site.job_record().startswith("vtorque: job ") and "deb12" in site.job_record()


def test_a_sisters_user_error_is_left_to_the_mother_superior(site: Site, guests: Guests
                                                             ) -> None:
    guests.error = ImageError("image 'deb12': not in the catalog")
    site.set_job(vm="img=deb12")
    verdict = site.verdict(site.start("n2"))
    assert verdict == ("abort" if site.scheduler == "slurm" else "run")
    assert site.offline() == []
    assert handoff.read(config(site), site.job_id, "n2").user_fault
    guests.error = None
    assert site.verdict(site.start("n1")) == "abort"          # the job is refused once


def test_a_sister_starts_its_own_guests_only(site: Site, guests: Guests) -> None:
    site.set_job()
    assert site.verdict(site.start("n2")) == "run"
    assert [(c["index"], c["count"], c["node"]) for c in guests.calls] == [(1, 2, "n2")]
    assert handoff.read(config(site), site.job_id, "n2").state == handoff.READY


# --- the site's setup -------------------------------------------------------------------------

def test_a_broken_config_fails_every_event_with_one_line(site: Site, no_libvirt: None,
                                                         capsys: pytest.CaptureFixture) -> None:
    site.set_job()
    site.write_config(limits={"vcpus": 0})
    assert site.start("n1") == site.failure_status(start=True)
    assert "limits.vcpus" in one_line(capsys.readouterr().err)
    assert site.end("n1") == site.failure_status(start=False)
    assert "limits.vcpus" in one_line(capsys.readouterr().err)
    assert site.programs() == []         # nothing asked before the config is valid


def test_a_config_for_another_batch_system_is_a_node_fault(site: Site, no_libvirt: None,
                                                           capsys: pytest.CaptureFixture
                                                           ) -> None:
    other = next(s for s in SITES if s != site.scheduler)
    site.set_job()
    site.write_config(batch={"system": other})
    assert site.start("n1") == site.failure_status(start=True)
    assert f"batch.system: {other}" in one_line(capsys.readouterr().err)
    assert site.programs() == []


@pytest.mark.parametrize("job_id", ["-x", "12;id", "../7", "a" * 300, "\u0661"])
def test_a_malformed_job_id_from_the_batch_system_is_refused(site: Site, no_libvirt: None,
                                                             job_id: str,
                                                             capsys: pytest.CaptureFixture
                                                             ) -> None:
    assert site.start("n1", job_id=job_id) == site.failure_status(start=True)
    assert "is not a job id" in one_line(capsys.readouterr().err)
    assert site.end("n1", job_id=job_id) == site.failure_status(start=False)
    assert "is not a job id" in one_line(capsys.readouterr().err)
    assert site.programs() == []


def test_an_internal_error_fails_the_hook_with_its_traceback(site: Site, guests: Guests,
                                                             capsys: pytest.CaptureFixture
                                                             ) -> None:
    guests.error = ZeroDivisionError("bug")
    site.set_job()
    assert site.start("n1") == site.failure_status(start=True)
    err = capsys.readouterr().err
    assert f"internal error in the {site.scheduler} " in err
    assert "Traceback" in err and "ZeroDivisionError: bug" in err


def test_a_full_state_file_system_is_a_node_fault_told_to_the_others(
        site: Site, guests: Guests, capsys: pytest.CaptureFixture) -> None:
    """Writing the job's state fails (disk full): one line, the node's fault, and a failed
    status so the mother superior does not wait out its timeout. (vm/lifecycle turns its
    own OSErrors into one line too: tests/unit/test_defects.py.)"""
    guests.error = OSError(errno.ENOSPC, "No space left on device",
                           str(site.tmp / "state" / ".locks"))
    site.set_job()
    assert site.verdict(site.start("n2")) == site.sister_fault
    err = one_line(capsys.readouterr().err)
    assert "No space left on device" in err and "Traceback" not in err
    assert site.offline() == ["n2"]
    status = handoff.read(config(site), site.job_id, "n2")
    assert status.state == handoff.FAILED and not status.user_fault


# --- the end of a job -------------------------------------------------------------------------

def test_a_failed_teardown_takes_the_node_out_of_service(site: Site,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture
                                                         ) -> None:
    from vtorque.journal import JobPaths
    from vtorque.vm import lifecycle

    def stuck(job_id: str, cfg: Any) -> list[str]:
        raise TeardownError(job_id, ["guest vt-0 still exists after destroy"])
    monkeypatch.setattr(lifecycle, "down", stuck)
    site.set_job()
    cfg = config(site)
    os.makedirs(JobPaths.for_job(site.job_id, cfg.state_dir, cfg.ramdisk_dir).job_dir)
    assert site.end("n1") == site.end_offlined
    assert "still exists after destroy" in one_line(capsys.readouterr().err)
    assert site.offline() == ["n1"]


def test_the_end_tears_down_and_the_last_node_releases_the_job(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtorque.journal import JobPaths
    from vtorque.vm import lifecycle
    downed: list[str] = []

    def down(job_id: str, cfg: Any) -> list[str]:
        downed.append(cfg.node_name)
        os.rmdir(JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir).job_dir)
        return ["vt-0"]
    monkeypatch.setattr(lifecycle, "down", down)
    site.set_job()
    publish(site, "n1")
    publish(site, "n2")
    cfg = config(site)
    job_dir = JobPaths.for_job(site.job_id, cfg.state_dir, cfg.ramdisk_dir).job_dir
    os.makedirs(job_dir)
    assert site.end("n1") == 0
    assert handoff.nodes_left(cfg, site.job_id) == ["n2"]
    os.makedirs(job_dir)
    assert site.end("n2") == 0
    assert downed == ["n1", "n2"]
    assert not os.path.exists(handoff.job_dir(cfg, site.job_id))
    assert site.offline() == []
