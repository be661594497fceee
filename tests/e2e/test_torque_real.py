"""vtorque on a real Torque 6.1 (scripts/torque-cluster: pbs_server, pbs_sched, trqauthd and
two pbs_mom with their own mom_priv on loopback), jobs submitted with vsub by an ordinary
user, the hooks installed by contrib/torque_hooks/install, guests booted by the one real
libvirtd:

- a VM job on 2 nodes x 2 guests: the sister's prologue.parallel and the mother
  superior's prologue start the guests, the script runs in guest rank 0 as the owner,
  mpirun spans all four guests with vtorque's hostfile (hello, allreduce, a ping-pong
  between the nodes), output and exit status come back, the job's comment names the
  image, nothing is left;
- the user's error (the image withdrawn, the request altered with qalter): the job is
  aborted, the reason in its comment, the nodes stay in service, nothing is booted;
- a node fault (a guest that never answers): that node takes itself offline with
  vtorque's note and the job is requeued, at most batch.max_requeues times, then
  aborted (the real server alone would requeue it forever);
- an unusable config on the mother superior: VM jobs abort, other jobs run;
- qdel while the guests start and while the job runs: nothing left; meanwhile the
  adapter's pbs_python path reads what qstat reads;
- a teardown that cannot finish takes the node offline; the reaper keeps the guests of
  a running job and removes those of a job the server does not know;
- a job without VM requests runs untouched.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest

from tests.e2e.accounts import JOB_USER
from tests.e2e.conftest import REPO
from tests.e2e.real_batch import (PYTHON, TorqueCluster, cleanup, job_list,
                                   module_cluster, withdrawn_image)
from vtorque.journal import JobPaths

pytestmark = pytest.mark.guests

VM_JOB = """#!/bin/sh
#PBS -N vm-mpi
#PBS -l nodes=2:ppn=1
#PBS -vm img=testguest,vms_per_node=2,vcpus=1,ram=256M
echo "rank0 on $(hostname) as $(id -un)"
cd "$PBS_O_WORKDIR"
echo "guests: $(sort -u "$PBS_NODEFILE" | tr '\\n' ' ')"
mpirun -np 4 ./hello
mpirun -np 4 ./allreduce || exit 11
# Rank 0 and rank 1 on guests of different nodes: the first guest of each node.
mpirun -np 2 --host "$(sed -n 1p "$PBS_NODEFILE"),$(sed -n 3p "$PBS_NODEFILE")" \\
    ./pingpong 20 || exit 12
exit 3
"""
SLEEPER = """#!/bin/sh
#PBS -N vm-sleep
#PBS -l nodes=2:ppn=1
#PBS -vm img=testguest,vcpus=1,ram=256M
sleep 600
"""

torque = module_cluster(TorqueCluster, "torque-real")


jobs = job_list("torque")


def out_files(cluster, job_id: str, name: str) -> tuple[str, str]:
    number = job_id.split(".")[0]
    out = cluster.workdir / f"{name}.o{number}"
    err = cluster.workdir / f"{name}.e{number}"
    cluster.wait(f"{out} delivered", lambda: out.exists() and err.exists(), timeout=60)
    return out.read_text(), err.read_text()


def test_a_vm_job_runs_mpi_across_both_nodes_guests(torque, jobs):
    job_id = torque.submit(script=VM_JOB, name="vm-mpi")
    jobs.append(job_id)
    job = torque.wait_finished(job_id)
    out, err = out_files(torque, job_id, "vm-mpi")
    assert job["exit_status"] == "3", (job, out, err)
    num = job_id.split(".")[0]
    guests = {f"vt{num}-{rank}" for rank in range(4)}
    assert f"rank0 on vt{num}-0 as {JOB_USER}" in out, (out, err)
    assert f"guests: {' '.join(sorted(guests))} " in out, (out, err)
    hello = re.findall(r"hello rank=(\d) size=4 host=(\S+)", out)
    assert sorted(int(r) for r, _ in hello) == [0, 1, 2, 3], out
    assert {host for _, host in hello} == guests          # every guest holds a rank
    assert "allreduce size=4 sum=10 expected=10 ok=yes" in out
    [ping] = re.findall(r"pingpong from=(\S+) to=(\S+) latency_us=([\d.]+) "
                        r"bandwidth_MBps=([\d.]+)", out)
    assert (ping[0], ping[1]) == (f"vt{num}-0", f"vt{num}-2")
    assert float(ping[2]) > 0 and float(ping[3]) > 0
    for node in torque.nodes:                       # both nodes started their guests
        assert torque.logged(job_id, f'"node": "{node}"', '"phase": "ready"')
    torque.wait("nothing left", lambda: torque.leftovers(job_id) == [], timeout=60)
    assert torque.offline() == {}
    # The job's record says what it ran on (qstat -f comment, kept after completion).
    assert job["comment"].startswith("vtorque: image=testguest sha256="), job["comment"]
    # The test image opts in to snapshot starts: every guest was restored from its
    # node's template (built by this job's prologues).
    assert " restored=4/4 " in job["comment"], job["comment"]
    trace = torque.tracejob(job_id)
    assert "Exit_status=3" in trace, trace


def test_an_image_withdrawn_after_submission_aborts_the_job(torque, jobs, test_pool):
    """The user's error: aborted, the reason in the job's comment and vtorque's node
    log, nothing booted, every node still in service."""
    descriptor = withdrawn_image(test_pool)
    try:
        job_id = torque.submit("-h", script=SLEEPER.replace("img=testguest",
                                                            "img=vanishing"),
                               name="vm-gone")
        jobs.append(job_id)
    finally:
        os.unlink(descriptor)
    torque.run("qrls", job_id)
    job = torque.wait_finished(job_id, timeout=180)
    assert job["exit_status"] == "-2", job               # Torque: the prologue aborted it
    assert torque.logged(job_id, '"fault": "user"', "vanishing")
    # Torque returns no output files of an aborted job: the owner reads why in qstat -f.
    assert "refused" in job["comment"] and "vanishing" in job["comment"], job
    assert torque.offline() == {}
    assert torque.leftovers(job_id) == []


def test_a_request_altered_with_qalter_is_checked_again(torque, jobs):
    job_id = torque.submit("-h", script=SLEEPER, name="vm-alter")
    jobs.append(job_id)
    torque.run("qalter", "-v", "VTORQUE_VM=img=testguest;vcpus=9999", job_id)
    torque.run("qrls", job_id)
    job = torque.wait_finished(job_id, timeout=180)
    assert job["exit_status"] == "-2", job
    assert "vcpus=9999 exceeds the site limit" in job["comment"], job
    assert torque.offline() == {}
    assert torque.leftovers(job_id) == []


def test_a_job_without_vm_requests_runs_untouched(torque, jobs):
    done = torque.qsub_plain("#!/bin/sh\n#PBS -N plain\n#PBS -l nodes=2:ppn=1\n"
                             "echo plain on $(hostname)\n")
    jobs.append(done)
    job = torque.wait_finished(done, timeout=120)
    assert job["exit_status"] == "0", job
    # Only the shims' fast paths ran: no vtorque event for this job on any node.
    assert not torque.logged(done)


def test_an_unusable_config_aborts_vm_jobs_and_leaves_the_others(torque, jobs):
    """A config the mother superior cannot load: its VM jobs are aborted (the real
    server would requeue them forever, twice a second), jobs without VMs still run."""
    vm_job = torque.submit("-h", script=SLEEPER, name="vm-broken")  # vsub reads it too
    jobs.append(vm_job)
    originals = {node: torque.config_path(node).read_text() for node in torque.nodes}
    for node, text in originals.items():
        torque.config_path(node).write_text(text + "bogus_key: 1\n")
    try:
        torque.run("qrls", vm_job)
        plain = torque.qsub_plain("#!/bin/sh\n#PBS -l nodes=2:ppn=1\ntrue\n")
        jobs.append(plain)
        job = torque.wait_finished(vm_job, timeout=180)
        assert job["exit_status"] == "-2" and int(job["start_count"]) == 1, job
        assert torque.wait_finished(plain, timeout=120)["exit_status"] == "0"
        assert torque.offline() == {}   # a sister never fails its prologue.parallel
    finally:
        for node, text in originals.items():
            torque.config_path(node).write_text(text)
    torque.wait("nothing left", lambda: torque.leftovers(vm_job) == [], timeout=120)


@pytest.mark.parametrize("phase", ["starting", "running"])
def test_qdel_while_the_guests_start_or_the_job_runs_leaves_nothing(torque, jobs, phase):
    job_id = torque.submit(script=SLEEPER, name="vm-del")
    jobs.append(job_id)
    if phase == "starting":
        torque.wait("the first guest starting",
                    lambda: torque.logged(job_id, '"phase": "start"'), timeout=120,
                    poll=0.2)
    else:
        torque.wait("the job running in its guest", lambda: (
            (torque.job(job_id) or {}).get("job_state") == "R"
            and torque.logged(job_id, '"phase": "decided"')), timeout=300)
        assert_pbs_python_reads_what_qstat_reads(torque, job_id)
    torque.run("qdel", job_id)
    torque.wait_finished(job_id, timeout=300)
    torque.wait(f"nothing left of {job_id} ({phase})",
                lambda: torque.leftovers(job_id) == [], timeout=180)


def test_a_node_fault_offlines_that_node_and_the_requeues_are_bounded(torque, jobs):
    """A guest that never answers on one node: the node goes offline with vtorque's note,
    the job is requeued; cleared and started again it fails again, and past
    batch.max_requeues (1 here) vtorque aborts it: the real server alone requeues a
    failing prologue forever, without a hold."""
    sister = torque.nodes[0]
    slow = torque.config_path(sister)
    original = slow.read_text()
    slow.write_text(original.replace("guest_ready: 120", "guest_ready: 0.5"))
    try:
        job_id = torque.submit(script=SLEEPER, name="vm-fault")
        jobs.append(job_id)
        notes = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = torque.job(job_id) or {}
            if torque.finished(job):
                break
            for node, note in torque.offline().items():
                notes.append(note)
                torque.clear(node)          # as an admin would, to let it run again
            time.sleep(1)
        job = torque.job(job_id)
        assert torque.finished(job), job
        assert job["exit_status"] == "-2", job                # aborted, not requeued
        assert int(job["start_count"]) == 2, job            # max_requeues=1: two runs
        assert notes and all(n.startswith("vtorque:") and "did not answer" in n
                             for n in notes), notes
        assert "batch.max_requeues=1" in job["comment"], job
    finally:
        slow.write_text(original)
    torque.wait("nothing left", lambda: torque.leftovers(job_id) == [], timeout=180)


def test_a_teardown_that_cannot_finish_takes_the_node_offline(torque, jobs):
    job_id = torque.submit(script=SLEEPER, name="vm-stuck")
    jobs.append(job_id)
    torque.wait("the job running", lambda: torque.logged(job_id, '"phase": "decided"'),
                timeout=300)
    node = torque.nodes[0]
    cfg = torque.config(node)
    pinned = os.path.join(JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir).job_dir,
                          "pinned")
    with open(pinned, "w") as handle:
        handle.write("x")
    subprocess.run(["chattr", "+i", pinned], check=True)
    try:
        torque.run("qdel", job_id)
        torque.wait_finished(job_id, timeout=300)
        note = torque.wait(f"{node} offline", lambda: torque.offline().get(node),
                           timeout=120)
        assert note.startswith("vtorque:") and job_id in note, note
    finally:
        subprocess.run(["chattr", "-i", pinned], check=False)
    cleanup(torque, [job_id])
    assert torque.leftovers(job_id) == []


def test_the_reaper_keeps_a_running_jobs_guests_and_removes_an_unknown_jobs(torque, jobs):
    from vtorque.admin.reaper import reap
    from vtorque.batch import registry
    from vtorque.prologue.guests import bring_up
    from vtorque.request import parse_request
    running = torque.submit(script=SLEEPER, name="vm-kept")
    jobs += [running, "900.gone"]
    torque.wait("the job running", lambda: torque.logged(running, '"phase": "decided"'),
                timeout=300)
    node = torque.nodes[0]
    cfg = torque.config(node)
    bring_up("900.gone", parse_request("vcpus=1,ram=256M", cfg), cfg, user=None)
    verdicts = {v.job_id: v.action
                for v in reap(cfg, registry.get("torque", cfg.batch.bin_dir))}
    assert verdicts["900.gone"] == "reaped", verdicts
    assert verdicts[running] == "kept", verdicts
    assert torque.leftovers("900.gone") == []
    assert torque.logged(running, '"phase": "ready"')


def assert_pbs_python_reads_what_qstat_reads(torque, job_id: str) -> None:
    """The Torque adapter's pbs_python path (scripts/torque-cluster builds the binding)
    against the real server: the same JobContext as qstat -f -x, for a running VM job."""
    site = torque.env.get("TORQUE_PYTHONPATH")
    assert site, "scripts/torque-cluster reports no pbs_python build (TORQUE_PYTHONPATH)"
    check = ("import sys, json, dataclasses\n"
             "from vtorque.batch.torque import Torque\n"
             "via = Torque(sys.argv[1])._job_via_pbs_python(sys.argv[2])\n"
             "qstat = Torque(sys.argv[1], use_pbs_python=False).job(sys.argv[2])\n"
             "print(json.dumps([via and dataclasses.asdict(via), dataclasses.asdict(qstat)],"
             " default=str))\n")
    done = subprocess.run([str(PYTHON), "-c", check, torque.bin_dir, job_id],
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin"}, cwd=str(REPO))
    assert done.returncode == 0, done.stderr
    via, qstat = json.loads(done.stdout)
    assert via is not None, "pbs_python could not read the job"
    assert via == qstat and via["vm_request"] and len(via["nodes"]) == 2, (via, qstat)
