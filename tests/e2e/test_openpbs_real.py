"""vtorque on a real OpenPBS 23.06 (scripts/openpbs-cluster: PostgreSQL, pbs_server,
pbs_sched, pbs_comm and two pbs_mom, n1 and n2, inside the vtorque-dev namespace), jobs
submitted with vsub by an ordinary user, the hook imported by contrib/pbs_hooks/install.sh,
guests booted by the one real libvirtd:

- a VM job on 2 nodes: execjob_begin brings up each node's guest, the primary's
  execjob_prologue waits for both and accepts, execjob_launch makes the job shell the
  job's program, the script runs in guest rank 0 as the owner, mpirun spans both guests,
  output and exit status come back (qstat -fx -F json), the job's log names the image,
  execjob_end leaves nothing on either node;
- the user's error (an image withdrawn after submission): the job is deleted, not rerun,
  the reason in its log, the nodes stay in service;
- a node fault (a guest that never answers on the sister): that vnode goes offline with
  vtorque's reason, the job is rerun; past batch.max_requeues vtorque deletes it;
- qdel of a running job (execjob_abort does not fire for it): nothing left;
- a job without VM requests runs untouched.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.e2e.accounts import JOB_USER
from tests.e2e.real_batch import OpenPBSCluster, job_list, module_cluster, withdrawn_image

pytestmark = pytest.mark.guests

VM_JOB = """#!/bin/sh
#PBS -N vm-mpi
#PBS -l select=2:ncpus=1
#PBS -l place=scatter
#PBS -vm img=testguest,vcpus=1,ram=256M
echo "rank0 on $(hostname) as $(id -un)"
cd "$PBS_O_WORKDIR"
echo "guests: $(sort -u "$PBS_NODEFILE" | tr '\\n' ' ')"
mpirun -np 2 ./hello
mpirun -np 2 ./allreduce || exit 11
exit 3
"""
SLEEPER = """#!/bin/sh
#PBS -N vm-sleep
#PBS -l select=2:ncpus=1
#PBS -l place=scatter
#PBS -vm img=testguest,vcpus=1,ram=256M
sleep 600
"""

openpbs = module_cluster(OpenPBSCluster, "openpbs-real")


jobs = job_list("openpbs")


def submit(cluster, script: str, name: str, *args: str) -> str:
    out, err = cluster.workdir / f"{name}.out", cluster.workdir / f"{name}.err"
    for path in (out, err):
        path.unlink(missing_ok=True)
    return cluster.submit("-o", str(out), "-e", str(err), *args, script=script,
                          name=f"{name}.sh")


def output(cluster, name: str) -> tuple[str, str]:
    out, err = cluster.workdir / f"{name}.out", cluster.workdir / f"{name}.err"
    cluster.wait(f"{out} delivered", lambda: out.exists() and err.exists(), timeout=60)
    return out.read_text(), err.read_text()


def test_a_vm_job_runs_mpi_across_both_nodes_guests(openpbs, jobs):
    job_id = submit(openpbs, VM_JOB, "vm-mpi")
    jobs.append(job_id)
    job = openpbs.wait_finished(job_id)
    out, err = output(openpbs, "vm-mpi")
    assert job["Exit_status"] == 3, (job, out, err)
    num = job_id.split(".")[0]
    guests = {f"vt{num}-{rank}" for rank in range(2)}
    assert f"rank0 on vt{num}-0 as {JOB_USER}" in out, (out, err)
    assert f"guests: {' '.join(sorted(guests))} " in out, (out, err)
    hello = re.findall(r"hello rank=(\d) size=2 host=(\S+)", out)
    assert {host for _, host in hello} == guests, out       # one rank in each guest
    assert "allreduce size=2 sum=3 expected=3 ok=yes" in out, out
    for node in openpbs.nodes:                # execjob_begin started each node's guest
        assert openpbs.logged(job_id, f'"node": "{node}"', '"phase": "ready"')
    openpbs.wait("nothing left", lambda: openpbs.leftovers(job_id) == [], timeout=60)
    assert openpbs.offline() == {}
    # The note the primary's prologue set as the job's comment (the server writes its own
    # when the job ends) stays in the job's log, tracejob's source.
    log = openpbs.mom_log(openpbs.nodes[0])
    assert f"{job_id};vtorque: image=testguest sha256=" in log
    assert " restored=2/2 " in log                 # both guests from their node's template


def test_an_image_withdrawn_after_submission_deletes_the_job(openpbs, jobs, test_pool):
    descriptor = withdrawn_image(test_pool)
    try:
        job_id = submit(openpbs, SLEEPER.replace("img=testguest", "img=vanishing"),
                        "vm-gone", "-h")
        jobs.append(job_id)
    finally:
        os.unlink(descriptor)
    openpbs.run("qrls", job_id)
    job = openpbs.wait_finished(job_id, timeout=240)
    assert int(job.get("run_count", 0)) <= 1, job            # deleted, not rerun
    assert job["Exit_status"] == -17, job                   # the prologue's delete
    assert openpbs.logged(job_id, '"fault": "user"', "vanishing")
    # The reason is in the job's log (tracejob); the server writes its own comment.
    assert f"{job_id};vtorque: job {job_id} refused: n1: image 'vanishing' is not in " \
        "the authorized image pool" in openpbs.mom_log(openpbs.nodes[0])
    assert openpbs.offline() == {}
    openpbs.wait("nothing left", lambda: openpbs.leftovers(job_id) == [], timeout=60)


def test_a_job_without_vm_requests_runs_untouched(openpbs, jobs):
    out = openpbs.workdir / "plain.out"
    out.unlink(missing_ok=True)
    job_id = openpbs.qsub_plain("#!/bin/sh\n#PBS -l select=2:ncpus=1\n#PBS -l place=scatter\n"
                                f"#PBS -o {out}\n#PBS -j oe\necho plain on $(hostname)\n")
    jobs.append(job_id)
    job = openpbs.wait_finished(job_id, timeout=120)
    assert job["Exit_status"] == 0, job
    assert "plain on" in openpbs.wait("plain output", lambda: out.exists() and out.read_text(),
                                      timeout=60)
    assert not openpbs.logged(job_id)      # the hook skipped vtorque for it everywhere


def test_resources_altered_with_qalter_are_checked_again(openpbs, jobs):
    """OpenPBS's qalter cannot touch the request (no -v: the job's Variable_List is fixed
    at submission), but it can shrink what vsub asked for the guests: each node then
    finds its guests beyond what the job was allocated there, the user's error."""
    job_id = submit(openpbs, SLEEPER, "vm-alter", "-h")
    jobs.append(job_id)
    openpbs.run("qalter", "-l", "select=2:ncpus=1:mem=100mb", job_id)
    openpbs.run("qrls", job_id)
    job = openpbs.wait_finished(job_id, timeout=240)
    assert job["Exit_status"] == -17, job
    assert f"{job_id};vtorque: job {job_id} refused" in openpbs.mom_log(openpbs.nodes[0])
    assert openpbs.logged(job_id, '"fault": "user"', "allocated")
    assert openpbs.offline() == {}
    openpbs.wait("nothing left", lambda: openpbs.leftovers(job_id) == [], timeout=60)


@pytest.mark.parametrize("phase", ["starting", "running"])
def test_qdel_while_the_guests_start_or_the_job_runs_leaves_nothing(openpbs, jobs, phase):
    job_id = submit(openpbs, SLEEPER, f"vm-del-{phase}")
    jobs.append(job_id)
    if phase == "starting":
        openpbs.wait("the first guest starting",
                     lambda: openpbs.logged(job_id, '"phase": "start"'), timeout=120,
                     poll=0.2)
    else:
        # Running in its guest: the primary's prologue accepted, its note in the log.
        openpbs.wait("the job running in its guest", lambda: (
            (openpbs.job(job_id) or {}).get("job_state") == "R"
            and f"{job_id};vtorque: image=testguest" in openpbs.mom_log(openpbs.nodes[0])),
            timeout=300)
    openpbs.run("qdel", job_id)
    try:
        openpbs.wait_finished(job_id, timeout=120)
    except AssertionError:
        # Seen on the real OpenPBS 23.06: a qdel that arrives while execjob_begin runs
        # can be lost (the MoM logs the TermJob, then runs the prologue, the launch and
        # the job anyway). The user deletes it again, and nothing may be left then.
        assert phase == "starting", "qdel of a running job did not end it"
        openpbs.run("qdel", job_id)
        openpbs.wait_finished(job_id, timeout=300)
    openpbs.wait("nothing left", lambda: openpbs.leftovers(job_id) == [], timeout=180)
    assert openpbs.offline() == {}


def test_a_node_fault_offlines_that_vnode_and_the_reruns_are_bounded(openpbs, jobs):
    sister = openpbs.nodes[1]
    slow = openpbs.config_path(sister)
    original = slow.read_text()
    slow.write_text(original.replace("guest_ready: 120", "guest_ready: 0.5"))
    try:
        job_id = submit(openpbs, SLEEPER, "vm-fault")
        jobs.append(job_id)
        notes: list[str] = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = openpbs.job(job_id) or {}
            if openpbs.finished(job):
                break
            for node, note in openpbs.offline().items():
                notes.append(f"{node}: {note}")
                openpbs.clear(node)          # as an admin would, to let it run again
            time.sleep(1)
        job = openpbs.job(job_id)
        assert openpbs.finished(job), job
        assert int(job["run_count"]) == 2, job           # max_requeues=1: two runs
        assert notes and all(n.startswith(f"{sister}: vtorque:") and "did not answer" in n
                             for n in notes), notes
        assert job["Exit_status"] == -17, job                # deleted, not rerun again
        assert "batch.max_requeues=1" in openpbs.mom_log(openpbs.nodes[0])
    finally:
        slow.write_text(original)
    openpbs.wait("nothing left", lambda: openpbs.leftovers(job_id) == [], timeout=180)
