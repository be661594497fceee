"""A real OSv unikernel under a real batch system: a Slurm job through vsub boots vtorque's
OSv image (scripts/build-osv-image: OSv with its REST API, vtorque's launcher and the test
program /usr/bin/vtorque-test), directly from its kernel with the guest's address on the
loader's command line; the job shell runs the job's one command through the REST API and
the launcher, after the job's vm_prologue (a program in the image, run the same way). The
program's stdout and stderr reach the job's output file, its exit status becomes the job's
exit code, and nothing is left. 512 MiB, 1 vCPU; its REST API answers about 1 s after
the domain starts.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.conftest import POOL, REPO
from tests.e2e.slurm_nodes import slurm_nodes, submitted_id

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

IMAGE = "osv-test"


@pytest.fixture(scope="module")
def osv_cluster(libvirtd, job_user):
    subprocess.run([str(REPO / "scripts" / "build-osv-image"), "--pool", POOL], check=True,
                   capture_output=True, text=True, timeout=3 * 3600)
    with slurm_nodes("vtorque-osv-", 1, img=IMAGE, ram="512M", pool_first=150,
                     pool_last=159) as cluster:
        yield cluster


JOB = """#!/bin/sh
#SBATCH -J osvjob
#SBATCH -o {out}
#VSUB -vm img={image},ram=512M,vm_prologue=/usr/bin/vtorque-test
/usr/bin/vtorque-test out "hello from OSv" env VTORQUE_JOB_ID err "to stderr" status 7
"""


def test_osv_job_returns_its_output_and_exit_status(osv_cluster):
    cluster = osv_cluster
    out = cluster.workdir / "osv.out"
    started = time.monotonic()
    job = submitted_id(cluster.vsub(JOB.format(out=out, image=IMAGE)))
    info = cluster.finished(job, 600)
    took = time.monotonic() - started
    text = out.read_text() if out.exists() else ""
    print(f"OSv job {job}: {took:.1f} s from submission to the end")
    # The program's own status, not the job shell's or the launcher's.
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "7:0", \
        info["_raw"] + text + cluster.logs()
    lines = text.splitlines()
    assert "hello from OSv" in lines
    assert f"VTORQUE_JOB_ID={job}" in lines
    assert "to stderr" in lines
    assert "vtorque:" not in text           # no failure of vtorque's own
    cluster.wait("nothing left", lambda: cluster.leftovers(job) == [], timeout=120)
