"""Smoke test of scripts/torque-cluster: a real one-machine Torque 6.1 cluster (trqauthd,
pbs_server, pbs_sched, two pbs_mom with a home each) on 127.0.0.1, vtorque's hook shims
installed in both moms by contrib/torque_hooks/install, the site's own scripts kept and run
by them. Needs root and the Torque build (scripts/torque-cluster build, cached); no libvirtd.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.e2e.accounts import JOB_UID, JOB_USER

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "scripts" / "torque-cluster")
JOB_TIMEOUT = 60.0
EVENTS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel")
SHIM_MARKER = "vtorque shim for Torque"

# The site's own script: one line per run (event, node, job id, its arguments' count and
# the epilogue's job exit status $10), then success.
SITE_SCRIPT = """#!/bin/sh
echo "{event} {node} $1 $# ${{10:-}}" >> {log}
exit 0
"""


class Cluster:
    def __init__(self, directory: Path, env: dict[str, str]):
        self.dir = directory
        self.env = env
        self.bin = Path(env["PATH"].split(":")[0])
        self.markers = directory / "markers.log"
        self.work = directory / "work"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True,
                              text=True, env=self.env, timeout=30)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: status {proc.returncode}\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    def qsub_as_user(self, *args: str, script: str) -> str:
        """qsub as the ordinary job user, from its work directory, with a user's PATH."""
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "HOME": f"/home/{JOB_USER}",
               "LOGNAME": JOB_USER, "USER": JOB_USER}
        proc = subprocess.run(["runuser", "-u", JOB_USER, "--", "env", "-i",
                               *[f"{k}={v}" for k, v in env.items()],
                               str(self.bin / "qsub"), *args], input=script,
                              capture_output=True, text=True, cwd=self.work, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def job(self, job_id: str) -> dict[str, str]:
        """`qstat -f -x` of one job: its top-level elements' text."""
        root = ET.fromstring(self.run("qstat", "-f", "-x", job_id).stdout.strip())
        [job] = root.iter("Job")
        return {child.tag: (child.text or "") for child in job}

    def logs(self) -> str:
        text = []
        for log in sorted([*self.dir.glob("server_logs/*"),
                           *self.dir.glob("moms/*/mom_logs/*")]):
            lines = log.read_text(errors="replace").splitlines()[-12:]
            text.append(f"--- {log}\n" + "\n".join(lines))
        return "\n".join(text)

    def wait(self, what: str, pred, timeout: float = JOB_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.logs()}")

    def marker_lines(self, job_id: str) -> list[list[str]]:
        if not self.markers.exists():
            return []
        return [line.split() for line in self.markers.read_text().splitlines()
                if line.split()[2:3] == [job_id]]


def start(directory: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, "start", "--dir", str(directory), "--nodes", "2", *extra],
                          capture_output=True, text=True, timeout=3600)


def write_vtorque_configs(directory: Path, bin_dir: Path, nodes: list[str]) -> str:
    """One vtorque config per node (its node_name), as each real node would have."""
    base = directory / "vtorque"
    (base / "images").mkdir(parents=True)
    secret = base / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    for node in nodes:
        cfg = {"node_name": node, "image_pool": str(base / "images"),
               "state_dir": str(base / node / "state"), "log_file": str(base / node / "log"),
               "ramdisk_dir": str(base / node / "ramdisk"), "secret_file": str(secret),
               "batch": {"system": "torque", "bin_dir": str(bin_dir),
                         "shared_state_dir": str(base / "shared"),
                         "job_shell": str(directory / "moms" / node / "job-shell")}}
        (base / f"{node}.yaml").write_text(yaml.safe_dump(cfg))
    return str(base / "{node}.yaml")


@pytest.fixture(scope="module")
def torque_real(job_user):
    """A cluster of its own, stopped at the end of this module (test_torque_real.py
    starts the default one afterwards: both use Torque's fixed ports)."""
    if os.geteuid() != 0:
        pytest.skip("the Torque cluster needs root")
    # Torque refuses a home below a directory others may write: /var/lib, not /tmp.
    directory = Path(tempfile.mkdtemp(prefix="vtorque-torque-test-", dir="/var/lib"))
    os.chmod(directory, 0o755)
    try:
        first = start(directory)
        assert first.returncode == 0, first.stderr
        env = {**os.environ, **dict(line.split("=", 1) for line in first.stdout.splitlines())}
        cluster = Cluster(directory, env)
        # Named after names that resolve to 127.0.0.1 here (scripts/torque-cluster).
        cluster.nodes = json.loads((directory / "torque-cluster.json").read_text())["nodes"]
        cluster.work.mkdir(mode=0o755)
        os.chown(cluster.work, JOB_UID, JOB_UID)
        # The site's own mom_priv scripts, there before vtorque is installed.
        for node in cluster.nodes:
            for event in EVENTS:
                path = directory / "moms" / node / "mom_priv" / event
                path.write_text(SITE_SCRIPT.format(event=event, node=node,
                                                   log=cluster.markers))
                path.chmod(0o755)
        configs = write_vtorque_configs(directory, cluster.bin, cluster.nodes)
        again = start(directory, "--vtorque-config", configs, "--vtorque-python",
                      sys.executable)
        assert again.returncode == 0, again.stderr
        assert "already running" in again.stderr, again.stderr
        cluster.restart_stdout = again.stdout
        cluster.first_stdout = first.stdout
        yield cluster
    finally:
        subprocess.run([SCRIPT, "stop", "--dir", str(directory), "--purge"],
                       capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


def test_start_reuses_the_cluster_and_listens_on_loopback_only(torque_real):
    c = torque_real
    assert c.restart_stdout == c.first_stdout
    assert [line.split("=")[0] for line in c.first_stdout.splitlines()][:3] == \
        ["PATH", "PBS_SERVER", "TORQUE_HOME"]
    status = subprocess.run([SCRIPT, "status", "--dir", str(c.dir)], capture_output=True,
                            text=True, timeout=30)
    assert status.returncode == 0, status.stdout
    listed = ", ".join(f"{node} free" for node in c.nodes)
    assert f"nodes: {listed}" in status.stdout, status.stdout
    pids = {f"pid={p.read_text().split()[0]}," for p in (c.dir / "run").glob("*.pid")}
    assert len(pids) == 3 + len(c.nodes), pids          # trqauthd, server, sched, moms
    listen = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True).stdout
    ours = [line for line in listen.splitlines() if any(p in line for p in pids)]
    # pbs_server one port, pbs_sched one, each mom two; trqauthd has a unix socket only.
    assert len(ours) == 2 + 2 * len(c.nodes), listen
    assert all(line.split()[3].startswith("127.0.0.1:") for line in ours), ours


def test_hooks_installed_by_the_install_script_keep_the_site_scripts(torque_real):
    for node in torque_real.nodes:
        mom_priv = torque_real.dir / "moms" / node / "mom_priv"
        for event in (*EVENTS, "epilogue.precancel"):
            shim = mom_priv / event
            assert SHIM_MARKER in shim.read_text(), shim
            st = shim.stat()
            assert st.st_uid == 0 and not st.st_mode & 0o022, oct(st.st_mode)
        for event in EVENTS:
            assert f"{event} {node} " in (mom_priv / "vtorque-site" / event).read_text()


def test_two_node_job_of_a_user_runs_with_both_nodes_scripts(torque_real):
    c = torque_real
    job_id = c.qsub_as_user("-l", "nodes=2:ppn=1", "-N", "smoke", script=(
        "#!/bin/sh\necho \"user=$(id -un)\"\nsort \"$PBS_NODEFILE\"\nexit 3\n"))
    job = c.wait(f"job {job_id} completed",
                 lambda: (j := c.job(job_id)).get("job_state") == "C" and j)
    assert job["exit_status"] == "3", job
    mother, sister = [h.split("/")[0] for h in job["exec_host"].split("+")]
    assert {mother, sister} == set(c.nodes), job["exec_host"]
    number = job_id.split(".")[0]
    out = c.work / f"smoke.o{number}"
    assert out.read_text().split() == [f"user={JOB_USER}", *sorted(c.nodes)]
    # The epilogues may still run when the server shows C.
    runs = c.wait("both epilogues ran", lambda: (lines := c.marker_lines(job_id))
                  and sum(line[0].startswith("epilogue") for line in lines) == 2 and lines)
    by_event = {line[0]: line for line in runs}
    assert len(runs) == len(EVENTS) and sorted(by_event) == sorted(EVENTS), runs
    assert by_event["prologue"][1] == mother and by_event["epilogue"][1] == mother
    assert by_event["prologue.parallel"][1] == sister
    assert by_event["epilogue.parallel"][1] == sister
    # Torque 6.1: 8 prologue arguments, 11 epilogue arguments with the exit status 10th.
    assert by_event["prologue"][3] == by_event["prologue.parallel"][3] == "8"
    assert by_event["epilogue"][3:] == ["11", "3"]


PBS_PYTHON_CHECK = """
import json, sys
import pbs
con = pbs.pbs_connect(pbs.pbs_default())
assert con > 0, pbs.error()
[job] = pbs.pbs_statjob(con, sys.argv[1], "NULL", "NULL")
attrs = {a.name + ("." + a.resource if a.resource else ""): a.value for a in job.attribs}
nodes = {n.name: {a.name: a.value for a in n.attribs}["state"]
         for n in pbs.pbs_statnode(con, "", "NULL", "NULL")}
missing = pbs.pbs_statjob(con, "999999", "NULL", "NULL")
print(json.dumps({"name": job.name, "attrs": attrs, "nodes": nodes, "missing": missing,
                  "error": pbs.error()[0]}))
pbs.pbs_disconnect(con)
"""


def test_pbs_python_reads_the_server(torque_real):
    c = torque_real
    site = c.env.get("TORQUE_PYTHONPATH")
    if not site:
        pytest.skip("pbs_python did not build (see scripts/torque-cluster build)")
    # (Not VTORQUE_VM: vtorque's prologue would refuse the job, no image pool here.)
    job_id = c.qsub_as_user("-N", "pbspy", "-v", "VT_TEST=a=b;c", script="#!/bin/sh\ntrue\n")
    c.wait(f"job {job_id} completed", lambda: c.job(job_id).get("job_state") == "C")
    proc = subprocess.run(["/usr/bin/python3", "-c", PBS_PYTHON_CHECK, job_id],
                          capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": site, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["name"] == job_id
    assert got["attrs"]["job_state"] == "C" and got["attrs"]["exit_status"] == "0"
    assert got["attrs"]["Job_Owner"].startswith(f"{JOB_USER}@")
    assert "VT_TEST=a=b;c" in got["attrs"]["Variable_List"].split(",")
    assert got["nodes"] == {node: "free" for node in c.nodes}
    assert got["missing"] == [] and got["error"] == 15001      # PBSE_UNKJOBID
