"""Smoke test of scripts/openpbs-cluster: a real one-machine OpenPBS 23.06.06 cluster
(PostgreSQL data service, pbs_server, pbs_sched, pbs_comm, two moms n1 and n2) running in
the network namespace of scripts/netns-libvirtd. Needs root; the first run on a machine
builds OpenPBS into the build cache (minutes), later runs start in seconds.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "scripts" / "openpbs-cluster")
# Not under /tmp or /var/tmp: pbs_mom refuses a PBS_HOME below a world-writable directory.
CLUSTER_DIR = "/var/lib/vtorque-openpbs-test"
NODES = ["n1", "n2"]
JOB_TIMEOUT = 60.0

# Appends one line per run: job id, this mom's node name, ms|sister, the job's user.
MARKER_HOOK = """import pbs
e = pbs.event()
j = e.job
with open({path!r}, "a") as f:
    f.write("%s %s %s %s\\n" % (j.id, pbs.get_local_nodename(),
                               "ms" if j.in_ms_mom() else "sister", j.euser))
e.accept()
"""


class Cluster:
    def __init__(self, env: dict[str, str], work: Path):
        self.conf = env["PBS_CONF_FILE"]
        self.exec = env["PBS_EXEC"]
        self.netns = env["PBS_NETNS"]
        self.work = work              # owned by the job user: scripts and output files
        self.env = {**os.environ, "PBS_CONF_FILE": self.conf,
                    "PATH": f"{self.exec}/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

    def bin(self, name: str) -> str:
        return f"{self.exec}/bin/{name}"

    def run(self, *argv: str, user: str | None = None, admin: bool = False,
            check: bool = True) -> subprocess.CompletedProcess:
        """A PBS command from this machine (as `user` when given); admin: as root on the
        server's host (the namespace), where root is a PBS manager."""
        argv = [self.bin(argv[0]), *argv[1:]]
        if user:
            argv = ["runuser", "-u", user, "--", "env", f"PBS_CONF_FILE={self.conf}", *argv]
        if admin:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env,
                              timeout=30, cwd=self.work)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: status {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def job(self, job_id: str) -> dict:
        out = self.run("qstat", "-f", "-F", "json", "-x", job_id).stdout
        return json.loads(out)["Jobs"][job_id]

    def wait(self, what: str, pred, timeout: float = JOB_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"{what}: not within {timeout:.0f} s")

    def wait_finished(self, job_id: str) -> dict:
        try:
            return self.wait(f"job {job_id} finished",
                             lambda: (j := self.job(job_id))["job_state"] == "F" and j)
        except AssertionError:
            self.run("qdel", "-W", "force", job_id, admin=True, check=False)
            raise

    def submit(self, user: str, script: str, *args: str) -> str:
        path = self.work / f"job-{uuid.uuid4().hex[:8]}.sh"
        path.write_text(script)
        os.chmod(path, 0o644)
        return self.run("qsub", *args, str(path), user=user).stdout.strip()


@pytest.fixture(scope="module")
def openpbs_cluster(libvirtd, job_user):
    """The cluster in CLUSTER_DIR; stopped and removed at the end of this module if
    started here (test_openpbs_real.py starts the default one: both use PBS's ports)."""
    if os.geteuid() != 0:
        pytest.skip("the OpenPBS cluster needs root")
    status = subprocess.run([SCRIPT, "status", "--dir", CLUSTER_DIR], capture_output=True)
    started_here = status.returncode != 0
    work = Path(tempfile.mkdtemp(prefix="vtorque-openpbs-test-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    uid = pwd.getpwnam(job_user).pw_uid
    os.chown(work, uid, uid)
    try:
        started = subprocess.run([SCRIPT, "start", "--dir", CLUSTER_DIR, "--nodes",
                                  str(len(NODES))], capture_output=True, text=True,
                                 timeout=1800)
        if started.returncode != 0 and "missing Debian packages" in started.stderr:
            pytest.skip(started.stderr.strip().splitlines()[-1])
        assert started.returncode == 0, started.stderr
        env = dict(line.split("=", 1) for line in started.stdout.splitlines())
        yield Cluster(env, work)
    finally:
        if started_here:
            subprocess.run([SCRIPT, "stop", "--dir", CLUSTER_DIR, "--purge"],
                           capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def marker_hook(openpbs_cluster):
    """An execjob_prologue hook that logs each run to a file; deleted again afterwards."""
    c = openpbs_cluster
    directory = Path(tempfile.mkdtemp(prefix="vtorque-openpbs-hook-", dir="/var/tmp"))
    log = directory / "prologue.log"
    body = directory / "marker.py"
    body.write_text(MARKER_HOOK.format(path=str(log)))
    # A new name each time: a hook deleted a moment ago is "pending delete" for a while.
    name = f"vtmarker{uuid.uuid4().hex[:8]}"
    c.run("qmgr", "-c", f"create hook {name}", admin=True)
    try:
        c.run("qmgr", "-c", f"set hook {name} event = execjob_prologue", admin=True)
        c.run("qmgr", "-c", f"import hook {name} application/x-python default {body}",
              admin=True)
        # The server sends the hook to the moms in the background: a job started before
        # a mom has it runs without it there.
        copies = [Path(CLUSTER_DIR, "moms", n, "mom_priv", "hooks", f"{name}.PY")
                  for n in NODES]
        c.wait("the hook copied to every mom", lambda: all(p.exists() for p in copies),
               timeout=30)
        time.sleep(0.5)
        yield log
    finally:
        c.run("qmgr", "-c", f"delete hook {name}", admin=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)


def test_start_reuses_the_cluster_and_status_reports_it(openpbs_cluster):
    c = openpbs_cluster
    again = subprocess.run([SCRIPT, "start", "--dir", CLUSTER_DIR, "--nodes", str(len(NODES))],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stderr
    assert again.stdout == (f"PBS_CONF_FILE={CLUSTER_DIR}/pbs.conf\n"
                            f"PBS_EXEC={c.exec}\nPBS_NETNS={c.netns}\n")
    status = subprocess.run([SCRIPT, "status", "--dir", CLUSTER_DIR], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    assert "nodes: n1 free, n2 free" in status.stdout
    down = subprocess.run([SCRIPT, "status", "--dir", f"{CLUSTER_DIR}-none"],
                          capture_output=True, text=True, timeout=30)
    assert down.returncode == 3
    # Nothing of PBS listens in the machine's own namespace: the daemons are in the netns.
    listen = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True).stdout
    assert not [line for line in listen.splitlines()
                if "pbs_server.bin" in line or "pbs_comm" in line], listen
    nodes = json.loads(c.run("pbsnodes", "-av", "-F", "json").stdout)["nodes"]
    assert {n: v["resources_available"]["host"] for n, v in nodes.items()} == \
        {n: n for n in NODES}


def test_two_node_job_runs_as_the_user_and_prologue_hook_runs_on_both_moms(
        openpbs_cluster, marker_hook, job_user):
    c = openpbs_cluster
    script = (f"#!/bin/sh\necho \"user $(id -un) job $PBS_JOBID\"\n"
              f"{c.bin('pbsdsh')} -n 1 -- /bin/echo sister task $PBS_JOBID\n")
    out, err = c.work / "two.out", c.work / "two.err"
    job_id = c.submit(job_user, script, "-l", "select=2:ncpus=1", "-l", "place=scatter",
                      "-o", str(out), "-e", str(err))
    job = c.wait_finished(job_id)
    assert job["Exit_status"] == 0, job
    assert job["exec_vnode"] == "(n1:ncpus=1)+(n2:ncpus=1)", job
    assert job["exec_host"] == "n1/0+n2/0", job
    assert job["Job_Owner"].split("@")[0] == job_user, job
    c.wait(f"{out} delivered", lambda: out.exists() and err.exists())
    assert out.stat().st_uid == pwd.getpwnam(job_user).pw_uid
    assert out.read_text().splitlines() == [f"user {job_user} job {job_id}",
                                            f"sister task {job_id}"]
    assert err.read_text() == ""
    # The sister's prologue runs at the job's start but the mother superior does not wait
    # for it: it may be logged after the job is over.
    def runs() -> list[list[str]]:
        if not marker_hook.exists():
            return []
        return sorted(line.split()[1:] for line in marker_hook.read_text().splitlines()
                      if line.split()[:1] == [job_id])

    c.wait("the prologue hook ran on both moms", lambda: len(runs()) >= 2, timeout=30)
    assert runs() == [["n1", "ms", job_user], ["n2", "sister", job_user]]


def test_exit_status_of_the_job_script(openpbs_cluster, job_user):
    c = openpbs_cluster
    job_id = c.submit(job_user, "#!/bin/sh\nexit 7\n", "-l", "select=1:ncpus=1",
                      "-o", str(c.work / "seven.out"), "-e", str(c.work / "seven.err"))
    job = c.wait_finished(job_id)
    assert job["Exit_status"] == 7, job
    assert job["run_count"] == 1, job
