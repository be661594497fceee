"""Smoke test of scripts/slurm-cluster: a real one-machine Slurm 22.05 cluster (munged,
slurmctld, two slurmd) with a Prolog and an Epilog, all on 127.0.0.1. Needs root and the
slurm-wlm and munge packages; no libvirtd.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "scripts" / "slurm-cluster")
NODES = ["n1", "n2"]
JOB_TIMEOUT = 30.0
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}

# The hooks log one line per run: job id, job user, node. Prolog fails while FAIL exists.
PROLOG = """#!/bin/sh
echo "$SLURM_JOB_ID $SLURM_JOB_USER $SLURMD_NODENAME" >> {dir}/prolog.log
[ -e {dir}/fail-prolog ] && exit 1
exit 0
"""
EPILOG = """#!/bin/sh
echo "$SLURM_JOB_ID $SLURM_JOB_USER $SLURMD_NODENAME" >> {dir}/epilog.log
exit 0
"""


class Cluster:
    def __init__(self, directory: Path):
        self.dir = directory
        self.hooks = directory / "hooks"
        self.out = directory / "out"
        self.env = {**os.environ, "SLURM_CONF": str(directory / "slurm.conf"),
                    "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=30,
                              cwd=self.out)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: status {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, *args: str) -> str:
        proc = self.run("sbatch", "--parsable", "-o", f"{self.out}/%j.out", *args)
        return proc.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (values without spaces only, enough here)."""
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(f.split("=", 1) for f in line.split() if "=" in f)

    def logs(self) -> str:
        text = []
        for log in sorted((self.dir / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-10:]
            text.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(text)

    def wait(self, what: str, pred, timeout: float = JOB_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.logs()}")

    def wait_finished(self, job_id: str) -> dict[str, str]:
        return self.wait(f"job {job_id} finished",
                         lambda: (j := self.job(job_id))["JobState"] in FINISHED and j)

    def hook_lines(self, hook: str, job_id: str) -> list[list[str]]:
        path = self.hooks / f"{hook}.log"
        if not path.exists():
            return []
        return [line.split() for line in path.read_text().splitlines()
                if line.split()[:1] == [job_id]]

    def node_state(self, node: str) -> str:
        return self.run("sinfo", "-h", "-n", node, "-o", "%t").stdout.strip()


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the Slurm cluster needs root")
    if not all(shutil.which(p, path="/usr/sbin:/usr/bin") for p in ("slurmctld", "munged")):
        pytest.skip("slurm-wlm and munge are not installed (apt-get install slurm-wlm munge)")
    directory = Path(tempfile.mkdtemp(prefix="vtorque-slurm-test-", dir="/var/tmp"))
    os.chmod(directory, 0o755)
    cluster = Cluster(directory)
    for d in (cluster.hooks, cluster.out):
        d.mkdir(mode=0o755)
    for name, text in (("prolog", PROLOG), ("epilog", EPILOG)):
        (cluster.hooks / name).write_text(text.format(dir=cluster.hooks))
        os.chmod(cluster.hooks / name, 0o755)
    status = subprocess.run([SCRIPT, "status", "--dir", str(directory)], capture_output=True)
    started_here = status.returncode != 0
    subprocess.run([SCRIPT, "start", "--dir", str(directory), "--nodes", str(len(NODES)),
                    "--prolog", str(cluster.hooks / "prolog"),
                    "--epilog", str(cluster.hooks / "epilog")],
                   check=True, capture_output=True, text=True, timeout=90)
    try:
        yield cluster
    finally:
        if started_here:
            subprocess.run([SCRIPT, "stop", "--dir", str(directory), "--purge"],
                           capture_output=True, timeout=90)


def test_start_is_idempotent_and_status_reports_running(slurm_cluster):
    c = slurm_cluster
    again = subprocess.run([SCRIPT, "start", "--dir", str(c.dir), "--nodes", str(len(NODES)),
                            "--prolog", str(c.hooks / "prolog"),
                            "--epilog", str(c.hooks / "epilog")],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert again.stdout == f"SLURM_CONF={c.dir}/slurm.conf\n"
    status = subprocess.run([SCRIPT, "status", "--dir", str(c.dir)], capture_output=True,
                            text=True, timeout=30)
    assert status.returncode == 0, status.stdout
    # Every daemon of ours (by pid file) listens on loopback only.
    pids = {f"pid={p.read_text().split()[0]}," for p in (c.dir / "run").glob("slurm*.pid")}
    assert len(pids) == 1 + len(NODES), pids
    listen = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True).stdout
    ours = [line for line in listen.splitlines() if any(p in line for p in pids)]
    assert len(ours) == 1 + len(NODES), listen
    assert all(line.split()[3].startswith("127.0.0.1:") for line in ours), ours


def test_sbatch_wrap_runs_and_writes_output(slurm_cluster):
    c = slurm_cluster
    job_id = c.sbatch("--wrap", "hostname")
    job = c.wait_finished(job_id)
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
    out = c.out / f"{job_id}.out"
    c.wait(f"{out} written", lambda: out.exists() and out.read_text().strip())
    assert out.read_text().strip() == socket.gethostname()


def test_prolog_and_epilog_run_with_job_id_and_user(slurm_cluster):
    c = slurm_cluster
    job_id = c.sbatch("-w", "n1", "--wrap", "true")
    assert c.wait_finished(job_id)["JobState"] == "COMPLETED"
    assert c.hook_lines("prolog", job_id) == [[job_id, "root", "n1"]]
    # The Epilog may still be running when the job shows as COMPLETED (COMPLETING ends first).
    assert c.wait("epilog ran", lambda: c.hook_lines("epilog", job_id)) == \
        [[job_id, "root", "n1"]]


def test_two_node_job_runs_on_both_nodes(slurm_cluster):
    c = slurm_cluster
    job_id = c.sbatch("-N2", "--wrap", "srun hostname; srun printenv SLURMD_NODENAME")
    job = c.wait_finished(job_id)
    assert job["JobState"] == "COMPLETED", job
    assert job["NumNodes"] == "2" and job["NodeList"] == "n[1-2]", job
    lines = (c.out / f"{job_id}.out").read_text().split()
    host = socket.gethostname()
    assert sorted(lines) == sorted([host, host, "n1", "n2"])
    # PrologFlags=Alloc: the Prolog ran on every allocated node, at allocation.
    assert sorted(line[2] for line in c.hook_lines("prolog", job_id)) == ["n1", "n2"]
    c.wait("epilog ran on both nodes", lambda: len(c.hook_lines("epilog", job_id)) == 2)


def test_failing_prolog_drains_node_and_requeues_job_held(slurm_cluster):
    c = slurm_cluster
    flag = c.hooks / "fail-prolog"
    flag.touch()
    job_id = None
    try:
        job_id = c.sbatch("-w", "n1", "--wrap", "true")
        job = c.wait("job requeued held",
                     lambda: (j := c.job(job_id))["JobState"] == "PENDING"
                     and "held" in j["Reason"].lower() and j)
        # Slurm 22.05: Reason=launch_failed_requeued_held, Restarts=1, Priority=0 (held).
        assert job["Reason"] == "launch_failed_requeued_held", job
        assert job["Restarts"] == "1" and job["Priority"] == "0", job
        reasons = c.run("sinfo", "-R", "-h", "-o", "%N|%E").stdout
        assert "n1|Prolog error" in reasons.splitlines(), reasons
        assert c.node_state("n1") in ("drain", "drng"), c.run("sinfo").stdout
        assert c.hook_lines("prolog", job_id), "the Prolog did not run"
    finally:
        flag.unlink(missing_ok=True)
        if job_id:
            c.run("scancel", job_id, check=False)
        c.run("scontrol", "update", "nodename=n1", "state=resume")
        c.wait("n1 idle again", lambda: c.node_state("n1") == "idle")
