"""Acceptance test for Torque: vsub -> (stand-in) server -> mom hooks on 2 nodes -> the job
script in guest rank 0 -> epilogues; real libvirtd, real QEMU guests, real SSH.

Torque cannot be installed here: tests/harness/pbs_mom.py plays pbs_server and pbs_mom
from the documented contract, running the hook shims installed by
contrib/torque_hooks/install; qstat/pbsnodes are the stand-ins in tests/standins/.
"""

from __future__ import annotations

import pytest

import os
import subprocess
from pathlib import Path

from tests.e2e.cluster import JOB_UID, JOB_USER
from tests.standins import calls
from vtorque.journal import JobPaths
from vtorque.vm.host import Host

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

JOB_SCRIPT = """#!/bin/sh
#PBS -N vmjob
#PBS -vm vms_per_node=2
echo "host=$(hostname)"
echo "uid=$(id -u) gid=$(id -g)"
echo "nodefile=$PBS_NODEFILE"
cat "$PBS_NODEFILE"
echo "workdir=$(pwd)"
exit ${EXIT_WITH:-0}
"""


def test_two_node_job_runs_in_guest_rank0(torque_cluster):
    cluster = torque_cluster(2)
    job = cluster.vsub_job("-l", "nodes=2:ppn=2", "-vm", "img=testguest,vcpus=1,ram=256M",
                           script=JOB_SCRIPT)
    run = cluster.harness.run(job)
    assert run.prologue == {"node1": 0, "node2": 0}, run.prologue_output
    assert run.exit_status == 0, run.stderr
    lines = run.stdout.splitlines()
    job_num = job["id"].split(".")[0]
    assert f"host=vt{job_num}-0" in lines
    assert f"uid={JOB_UID} gid={JOB_UID}" in lines
    assert "nodefile=/etc/vtorque/nodefile" in lines
    # 4 guests x 1 vCPU, rank order, guests of both nodes.
    assert [ln for ln in lines if ln.startswith("vt")] == \
        [f"vt{job_num}-{rank}" for rank in range(4)]
    assert f"workdir={cluster.workdir}" in lines
    assert run.epilogue == {"node1": 0, "node2": 0}
    assert cluster.leftovers(job["id"]) == []


def test_failing_script_status_arrives(torque_cluster):
    cluster = torque_cluster(1)
    script = JOB_SCRIPT.replace("${EXIT_WITH:-0}", "3").replace("vms_per_node=2",
                                                                 "vms_per_node=1")
    job = cluster.vsub_job("-vm", "img=testguest", script=script)
    run = cluster.harness.run(job)
    assert run.prologue == {"node1": 0}, run.prologue_output
    assert run.exit_status == 3
    assert cluster.leftovers(job["id"]) == []


def test_job_without_vm_request_passes_through(torque_cluster):
    cluster = torque_cluster(1)
    job = cluster.harness.submit(["qsub", "-N", "plain"], "#!/bin/sh\necho plain\n",
                                 JOB_USER)
    run = cluster.harness.start(job)
    assert run.prologue == {"node1": 0}
    cluster.harness.finish(job, run)
    assert run.epilogue == {"node1": 0}
    assert cluster.leftovers(job["id"]) == []
    with Host("qemu:///system") as host:
        assert host.tagged_domains(job["id"]) == []


def test_image_withdrawn_after_submit_aborts(torque_cluster):
    cluster = torque_cluster(1)
    job = cluster.harness.submit(["qsub", "-v", "VTORQUE_VM=img=nosuchimage"],
                                 "#!/bin/sh\necho never\n", JOB_USER)
    run = cluster.harness.run(job)
    assert run.prologue == {"node1": 1}
    assert run.action == "abort"
    assert "not in the authorized image pool" in run.prologue_output
    assert not run.started
    assert cluster.leftovers(job["id"]) == []


def test_tampered_request_is_revalidated(torque_cluster):
    # A request altered after submission (qalter -v) goes through the same checks.
    cluster = torque_cluster(1)
    job = cluster.harness.submit(["qsub", "-v", "VTORQUE_VM=img=testguest;vcpus=999"],
                                 "#!/bin/sh\necho never\n", JOB_USER)
    run = cluster.harness.run(job)
    assert run.action == "abort"
    assert "vcpus=999 exceeds the site limit" in run.prologue_output
    assert cluster.leftovers(job["id"]) == []


def test_node_fault_requeues_then_aborts(torque_cluster):
    # libvirt unreachable on the node: requeue; past batch.max_requeues: abort.
    cluster = torque_cluster(1, libvirt_uri="qemu:///system?socket=/nonexistent/sock")
    job = cluster.harness.submit(["qsub", "-v", "VTORQUE_VM=img=testguest"],
                                 "#!/bin/sh\necho never\n", JOB_USER)
    run = cluster.harness.run(job)
    assert run.prologue == {"node1": 2}
    assert "cannot connect to libvirt" in run.prologue_output
    cluster.harness.set_job(job["id"], run_count=3)
    again = cluster.harness.run(job)
    assert again.prologue == {"node1": 1}
    assert "aborting it" in again.prologue_output
    assert cluster.leftovers(job["id"]) == []


def test_broken_config_requeues(torque_cluster):
    cluster = torque_cluster(1)
    cluster.nodes[0].config.write_text("bogus_key: 1\n")
    job = cluster.harness.submit(["qsub", "-v", "VTORQUE_VM=img=testguest"],
                                 "#!/bin/sh\necho never\n", JOB_USER)
    run = cluster.harness.start(job)
    assert run.prologue == {"node1": 2}
    assert "bogus_key: unknown key" in run.prologue_output


def test_hostile_hook_environment_is_ignored(torque_cluster, tmp_path):
    cluster = torque_cluster(1)
    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran"
    for name in ("qstat", "python3", "virsh", "qemu-img"):
        (evil / name).write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
        (evil / name).chmod(0o755)
    cluster.harness.hook_env = {"PATH": str(evil), "LD_PRELOAD": "/nonexistent/evil.so",
                                "PYTHONPATH": str(evil), "PBS_O_WORKDIR": "/etc"}
    job = cluster.harness.submit(["qsub", "-v", "VTORQUE_VM=img=nosuchimage"],
                                 "#!/bin/sh\necho never\n", JOB_USER)
    run = cluster.harness.start(job)
    assert run.prologue == {"node1": 1}  # the real qstat answered: the image is refused
    assert not marker.exists()


def test_teardown_failure_takes_node_offline(torque_cluster, monkeypatch):
    cluster = torque_cluster(1)
    cfg = cluster.config()
    # Leave state the epilogue cannot remove: a job dir it is not allowed to delete.
    paths = JobPaths.for_job("77.standin", cfg.state_dir, cfg.ramdisk_dir)
    os.makedirs(paths.job_dir)
    Path(paths.job_dir, "pinned").write_text("x")
    subprocess.run(["chattr", "+i", os.path.join(paths.job_dir, "pinned")], check=True)
    try:
        job = {"id": "77.standin", "euser": JOB_USER, "egroup": JOB_USER,
               "Job_Name": "x", "Resource_List": {}, "queue": "batch"}
        from tests.harness.pbs_mom import JobRun
        run = cluster.harness.finish(job, JobRun("77.standin", exit_status=0))
        assert run.epilogue == {"node1": 1}
        offline = [c for c in calls(cluster.db) if c["prog"] == "pbsnodes"]
        assert offline and "-o" in offline[0]["argv"]
        assert "node1" in offline[0]["argv"]
    finally:
        subprocess.run(["chattr", "-i", os.path.join(paths.job_dir, "pinned")], check=False)


def test_reaper_removes_dead_jobs_and_keeps_running_ones(torque_cluster):
    from vtorque.batch import registry
    from vtorque.admin.reaper import reap
    from vtorque.prologue.guests import bring_up
    from vtorque.request import parse_request
    cluster = torque_cluster(1)
    cfg = cluster.config()
    running = cluster.harness.submit(["qsub", "-v", "VTORQUE_VM=img=testguest"],
                                     "#!/bin/sh\n", JOB_USER)
    request = parse_request("vms_per_node=1", cfg)
    for job_id in ("900.gone", running["id"]):     # 900.gone: unknown to the server
        bring_up(job_id, request, cfg, user=None)
    verdicts = {v.job_id: v.action
                for v in reap(cfg, registry.get("torque", cfg.batch.bin_dir))}
    assert verdicts["900.gone"] == "reaped"
    assert verdicts[running["id"]] == "kept"
    assert cluster.leftovers("900.gone") == []
    with Host("qemu:///system") as host:
        assert [d.state for d in host.tagged_domains(running["id"])] == ["running"]
    # The job finishes without an epilogue (say, the mom restarted): the reaper cleans it.
    cluster.harness.set_job(running["id"], job_state="C")
    verdicts = {v.job_id: v.action
                for v in reap(cfg, registry.get("torque", cfg.batch.bin_dir))}
    assert verdicts[running["id"]] == "reaped"
    assert cluster.leftovers(running["id"]) == []
