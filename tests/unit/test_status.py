"""Unit tests of `vtorque status` (vtorque/admin/status.py, jobinfo.py): the phase of a VM
job from the batch system's state (stand-in scontrol) and what the nodes record (hand-off
statuses, address block, this node's events); users see their own jobs only; a job
nobody knows is one line, never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.standins import install, read_db, write_db
from tests.unit.operator_site import write_config
from vtorque import events
from vtorque.admin import cli, jobinfo, status
from vtorque.cluster import handoff

DIGEST = "85667e6c72245133bd7e3e80bac7d16b26fda15c0a3c68faa4b713850ea526cd"
JOB = {"JobName": "vmjob", "UserId": "alice(1001)", "GroupId": "hpc(100)",
       "JobState": "RUNNING", "Partition": "batch", "NodeList": "n[1-2]", "NumCPUs": 4,
       "CPU_IDs": {"n1": "0-1", "n2": "0-1"}, "Comment": "vtorque:img=testguest"}


class Site:
    def __init__(self, tmp: Path, config_data: dict):
        self.bin = tmp / "bin"
        self.db = install("slurm", self.bin, jobs={"77": dict(JOB)})
        self.config = write_config(tmp / "vtorque.yaml", config_data, {
            "node_name": "n1", "network": {"mode": "network"},
            "batch": {"system": "slurm", "bin_dir": str(self.bin)}})

    def job(self, **fields: Any) -> None:
        data = read_db(self.db)
        data["jobs"]["77"].update(fields)
        write_db(self.db, data)

    def publish(self, node: str, state: str, **fields: Any) -> None:
        base = 0 if node == "n1" else 1
        guests = [{"rank": base, "name": f"vtorque-77-{base}", "hostname": f"vt77-{base}",
                   "mac": "52:54:00:00:00:01"}] if state == handoff.READY else []
        fields.setdefault("run", 1)                 # Slurm: Restarts + 1
        handoff.publish(self.config, "77", handoff.NodeStatus(node, state, guests=guests,
                                                              **fields))

    def view(self, job: str = "77") -> status.JobView:
        adapter, problem = jobinfo.batch_adapter(self.config)
        return status.decide(jobinfo.gather(self.config, job, adapter, problem, root=False))

    def run(self, capsys: Any, *args: str) -> tuple[int, str, str]:
        code = cli.main(["--config", self.config.path, "status", *args])
        out, err = capsys.readouterr()
        return code, out, err


@pytest.fixture
def site(tmp_path: Path, config_data: dict) -> Site:
    return Site(tmp_path, config_data)


def test_a_pending_job_is_queued(site: Site) -> None:
    site.job(JobState="PENDING", NodeList="", CPU_IDs={})
    view = site.view()
    assert (view.phase, view.owner, view.batch_state) == ("queued", "alice", "PENDING")


def test_provisioning_shows_each_nodes_progress(site: Site) -> None:
    site.publish("n1", handoff.READY)
    site.publish("n2", handoff.STARTING)
    view = site.view()
    assert view.phase == "provisioning" and view.detail == "1 of 2 node(s) ready"
    assert [(n.node, n.state) for n in view.nodes] == [("n1", "ready"), ("n2", "starting")]


def test_running_names_rank_0_and_each_guests_address_image_and_boot(site: Site) -> None:
    site.publish("n1", handoff.READY)
    Path(site.config.batch.shared_state_dir, "addresses.json").write_text(
        json.dumps({"77": [3232266816, 2]}))                          # 192.168.122.64
    site.publish("n2", handoff.READY)
    events.record(site.config, "77", "start", run=0)
    events.record(site.config, "77", "ready", seconds=6.25, guests=1, image="testguest",
                  digest=DIGEST)
    view = site.view()
    assert view.phase == "running"
    assert view.detail == "the job script runs in guest rank 0 (vt77-0 on n1)"
    assert (view.image, view.digest) == ("testguest", DIGEST)
    rank0 = view.nodes[0].guests[0]
    assert (rank0.address, rank0.image, rank0.digest, rank0.boot_seconds) == \
        ("192.168.122.64", "testguest", DIGEST, 6.25)
    assert view.nodes[1].guests[0].address == "192.168.122.65"


def test_a_failed_node_names_the_reason_and_whose_fault(site: Site) -> None:
    site.publish("n1", handoff.READY)
    site.publish("n2", handoff.FAILED, reason="image 'x': not in the pool", user_fault=True)
    view = site.view()
    assert (view.phase, view.fault) == ("failed", "user")
    assert view.detail == "the job's request: image 'x': not in the pool"
    site.publish("n2", handoff.FAILED, reason="cannot connect to libvirt")
    assert site.view().detail == "node n2: cannot connect to libvirt"


def test_an_ended_job_tears_down_then_is_done(site: Site) -> None:
    site.publish("n1", handoff.READY)
    site.job(JobState="COMPLETING")
    assert site.view().phase == "tearing down"
    handoff.withdraw(site.config, "77", "n1")
    site.job(JobState="COMPLETED")
    events.record(site.config, "77", "teardown", ok=True, seconds=0.8, destroyed=1)
    view = site.view()
    assert (view.phase, view.detail) == ("done", "torn down in 0.8 s")
    assert [n.state for n in view.nodes] == ["nothing left", "nothing left"]


def test_an_aborted_start_stays_failed_after_the_job_is_gone(site: Site) -> None:
    site.job(JobState="CANCELLED")
    events.record(site.config, "77", "failed", fault="user", reason="vcpus=99 too many")
    events.record(site.config, "77", "decided", action="abort", fault="user")
    view = site.view()
    assert (view.phase, view.fault, view.detail) == ("failed", "user",
                                                     "abort: vcpus=99 too many")


def test_requeued_jobs_say_why(site: Site) -> None:
    events.record(site.config, "77", "failed", fault="this-node", reason="libvirt down")
    events.record(site.config, "77", "decided", action="requeue", fault="this-node")
    site.job(JobState="PENDING", NodeList="", CPU_IDs={}, Restarts=1)
    view = site.view()
    assert view.phase == "queued"
    assert view.detail == "requeued after a node fault: libvirt down"


def test_json_and_text_output(site: Site, capsys: Any) -> None:
    site.publish("n1", handoff.READY)
    site.publish("n2", handoff.READY)
    code, out, _ = site.run(capsys, "77", "--json")
    data = json.loads(out)
    assert code == 0 and data["phase"] == "running" and data["owner"] == "alice"
    assert data["nodes"][1]["guests"][0]["hostname"] == "vt77-1"
    code, out, _ = site.run(capsys, "77")
    assert code == 0 and out.startswith("job 77 (alice): running: ")
    assert "    rank 0  vt77-0  running" in out
    code, out, _ = site.run(capsys)
    assert out.splitlines()[1].split("\t")[:3] == ["77", "alice", "running"]


def test_unknown_jobs_are_one_line(site: Site, capsys: Any) -> None:
    code, out, err = site.run(capsys, "4711")
    assert code == 1 and out == ""
    assert err == "vtorque: job 4711 is unknown here (not in the batch system; no node " \
                  "recorded anything of it)\n"
    code, _, err = site.run(capsys, "../etc")
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_users_see_only_their_own_jobs(site: Site, capsys: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    site.publish("n1", handoff.READY)
    monkeypatch.setattr(os, "geteuid", lambda: 1002)
    monkeypatch.setattr(jobinfo, "me", lambda: "bob")
    code, out, err = site.run(capsys, "77")
    assert code == 1 and err == "vtorque: job 77 belongs to another user; users see only " \
                                "their own jobs\n"
    code, out, _ = site.run(capsys)
    assert code == 0 and out == "no VM jobs recorded here for bob\n"
    monkeypatch.setattr(jobinfo, "me", lambda: "alice")
    assert site.run(capsys, "77")[0] == 0


def test_a_short_torque_id_finds_the_recorded_one() -> None:
    assert jobinfo.resolve_id("12", ["12.head", "123.head"]) == "12.head"
    assert jobinfo.resolve_id("12", ["12.a", "12.b"]) == "12"


def test_only_real_event_lines_count() -> None:
    real = ('2026-01-01 10:00:00,001 42 INFO vtorque-event {"job": "5", "phase": "ready", '
            '"image": "testguest"}')
    forged = ('2026-01-01 10:00:01,001 42 ERROR job 6: request refused on n1: image '
              "'vtorque-event {\"job\": \"5\", \"phase\": \"teardown\"}'")
    inline = ('2026-01-01 10:00:01,001 42 INFO job 6: x vtorque-event {"job": "5", '
              '"phase": "end"}')
    found = jobinfo.parse_events("\n".join([real, forged, inline]))
    assert [e["phase"] for e in found] == ["ready"]
