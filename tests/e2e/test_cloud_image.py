"""A real distribution cloud image under a real batch system: a Slurm job on two nodes
(two slurmd of scripts/slurm-cluster, each node with its own vtorque config and state, as
two machines would have) boots one Debian 12 cloud guest per node (scripts/build-cloud-
image: GRUB from its own disk, systemd, cloud-init reading vtorque's NoCloud seed), then:

- runs its vm_prologue in both guests, as the owner, in the job's working directory;
- runs the job script in guest rank 0: the image's own Open MPI (`mpirun` from the image,
  over the per-job network, ranks started over SSH with the job's keys) computes an
  allreduce across the two guests, and every rank reads its input from and writes its
  output to the working directory, which is the node's directory, shared into every
  guest under the owner's identity (files it writes are the owner's);
- finds rank 0's data disk at /data, formatted and owned by the owner;
- runs its vm_epilogue in both guests after the script;
- and leaves nothing on either node.

Two guests of 1 vCPU and 768 MiB; under TCG a cloud guest takes 45-75 s to be ready on a
quiet machine and far longer on a loaded one, hence the generous, bounded waits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.accounts import JOB_UID, JOB_USER
from tests.e2e.conftest import POOL, REPO
from tests.e2e.slurm_nodes import slurm_nodes, submitted_id

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

IMAGE = "debian12"
JOB_TIMEOUT = 1200          # seconds from submission to the job's end (two TCG boots)


@pytest.fixture(scope="module")
def cloud(libvirtd, job_user):
    subprocess.run([str(REPO / "scripts" / "build-cloud-image"), "--pool", POOL], check=True,
                   capture_output=True, text=True, timeout=3600)
    with slurm_nodes("vtorque-cloud-", 2, img=IMAGE, ram="768M", pool_first=140,
                     pool_last=149) as cluster:
        yield cluster


PROLOGUE = """#!/bin/sh
echo "prologue host=$(hostname) uid=$(id -u) pwd=$PWD script=$VTORQUE_VM_SCRIPT" \\
    > "pro-$(hostname).txt"
"""
EPILOGUE = """#!/bin/sh
echo "epilogue host=$(hostname) uid=$(id -u) job-status=$VTORQUE_JOB_EXIT_STATUS" \\
    > "epi-$(hostname).txt"
"""
JOB = """#!/bin/sh
#SBATCH -J cloudmpi
#SBATCH -N 2
#SBATCH -o {out}
#VSUB -vm img={image},vcpus=1,ram=768M,disk=256M
#VSUB -vm vm_prologue={work}/pro.sh,vm_epilogue={work}/epi.sh
echo "rank0=$(hostname) uid=$(id -u) pwd=$(pwd)"
echo "mpirun=$(command -v mpirun) $(mpirun --version | head -n 1)"
echo "data=$(stat -c '%U %a' /data) $(df -P /data | awk 'NR == 2 {{print $1}}')"
echo written-in-the-guest > /data/probe && echo "data-write=$(cat /data/probe)"
mpirun -np 2 ./allreduce > allreduce.txt || exit 11
mpirun -np 2 sh -c 'echo "$(hostname) read $(cat input.txt)" > "out-$(hostname).txt"' \\
    || exit 12
cat allreduce.txt
"""


def owned(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def test_mpi_job_in_two_cloud_guests_with_shared_files_scripts_and_data(cloud):
    work = cloud.workdir
    mpicc = shutil.which("mpicc")
    assert mpicc, "scripts/setup installs libopenmpi-dev"
    subprocess.run([mpicc, "-O2", "-o", str(work / "allreduce"),
                    str(REPO / "tests" / "mpi" / "allreduce.c")], check=True, timeout=120)
    (work / "input.txt").write_text("the input\n")
    for name, text in (("pro.sh", PROLOGUE), ("epi.sh", EPILOGUE)):
        (work / name).write_text(text)
        (work / name).chmod(0o755)
    for path in work.iterdir():
        os.chown(path, JOB_UID, JOB_UID)
    out = work / "job.out"
    started = time.monotonic()
    job = submitted_id(cloud.vsub(JOB.format(out=out, image=IMAGE, work=work)))
    info = cloud.finished(job, JOB_TIMEOUT)
    took = time.monotonic() - started
    text = out.read_text() if out.exists() else ""
    assert info["JobState"] == "COMPLETED", info["_raw"] + text + cloud.logs()
    print(f"cloud-image MPI job {job}: {took:.0f} s from submission to the end")
    guests = [f"vt{job}-0", f"vt{job}-1"]

    # The job ran in guest rank 0, as the owner, in the shared working directory.
    assert f"rank0={guests[0]} uid={JOB_UID} pwd={work}" in text
    # The image's own Open MPI, not the node's (the test guest borrows the node's).
    assert "mpirun=/usr/bin/mpirun mpirun (Open MPI) 4." in text
    assert "allreduce size=2 sum=3 expected=3 ok=yes" in text
    # /data: rank 0's disk, formatted, the owner's, writable from the guest.
    assert f"data={JOB_USER} 755 /dev/vd" in text and "data-write=written-in-the-guest" in text
    # Every rank read the input from the node's directory and wrote its output there; the
    # files are the owner's on the node.
    for guest in guests:
        result = work / f"out-{guest}.txt"
        assert result.read_text() == f"{guest} read the input\n"
        assert owned(result) == (JOB_UID, JOB_UID)
    assert owned(work / "allreduce.txt") == (JOB_UID, JOB_UID)
    # vm_prologue and vm_epilogue ran in both guests, as the owner, around the script.
    for guest in guests:
        assert (work / f"pro-{guest}.txt").read_text() == \
            f"prologue host={guest} uid={JOB_UID} pwd={work} script=prologue\n"
        assert (work / f"epi-{guest}.txt").read_text() == \
            f"epilogue host={guest} uid={JOB_UID} job-status=0\n"
        assert owned(work / f"epi-{guest}.txt") == (JOB_UID, JOB_UID)
    assert (work / f"pro-{guests[0]}.txt").stat().st_mtime <= \
        (work / "allreduce.txt").stat().st_mtime <= (work / f"epi-{guests[0]}.txt").stat().st_mtime
    cloud.wait("nothing left", lambda: cloud.leftovers(job) == [], timeout=120)
