"""A real batch system end to end: a real slurmctld and slurmd (scripts/slurm-cluster, on
loopback) whose Prolog and Epilog are vtorque's shims (contrib/slurm/install), a real
libvirtd with real QEMU guests, real Open MPI. A VM job through vsub runs an MPI program
across its guests and its output arrives; an image withdrawn after submission cancels
the job with a readable reason and leaves the node in service; a node fault drains the
node and requeues the job held; scancel during provisioning leaves nothing.
"""

from __future__ import annotations

import contextlib
import os
import random
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
from tests.e2e.conftest import POOL, REPO
from vtorque import config as config_mod
from vtorque.vm.host import Host

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

SCRIPT = str(REPO / "scripts" / "slurm-cluster")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}


class SlurmVmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.env = {"PATH": "/usr/bin:/bin:/usr/sbin", "SLURM_CONF": str(root / "slurm" /
                                                                         "slurm.conf")}
        self.config_path = root / "vtorque.yaml"
        self.workdir = root / "work"

    @property
    def config(self):
        return config_mod.load(str(self.config_path))

    def slurm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{argv}: {done.returncode} {done.stdout}{done.stderr}")
        return done

    def vsub(self, script: str, *args: str) -> subprocess.CompletedProcess:
        """vsub as the job owner, submitting to the real sbatch."""
        env = {**self.env, "HOME": f"/home/{JOB_USER}", "VTORQUE_CONFIG": str(self.config_path),
               "PYTHONPATH": str(REPO)}
        path = self.workdir / "job.sh"
        path.write_text(script)
        os.chown(path, JOB_UID, JOB_UID)
        return subprocess.run(["setpriv", f"--reuid={JOB_UID}", f"--regid={JOB_UID}",
                               "--init-groups", "--", sys.executable, "-m", "vtorque.submit.vsub",
                               *args, str(path)],
                              capture_output=True, text=True, env=env, cwd=self.workdir,
                              timeout=60)

    def job(self, job_id: str) -> dict[str, str]:
        out = self.slurm("scontrol", "show", "job", "-o", job_id).stdout
        fields = {}
        for word in out.split():
            if "=" in word:
                key, _, value = word.partition("=")
                fields.setdefault(key, value)
        fields["_raw"] = out
        return fields

    def wait(self, what: str, pred, timeout: float = 240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(0.5)
        log = (self.root / "vtorque.log").read_text() if (self.root / "vtorque.log").exists() \
            else ""
        raise AssertionError(f"{what}: not within {timeout:.0f} s\n{log[-2000:]}")

    def node(self) -> str:
        return self.slurm("sinfo", "-h", "-o", "%n").stdout.split()[0]

    def node_state(self) -> str:
        return self.slurm("sinfo", "-h", "-o", "%t").stdout.strip()

    def leftovers(self, job_id: str) -> list[str]:
        from tests.e2e import leftovers
        cfg = self.config
        found = leftovers.on_nodes(job_id, {cfg.node_name or "node": cfg})
        shared = Path(cfg.batch.shared_state_dir)
        if (shared / "addresses.json").exists() and job_id in \
                (shared / "addresses.json").read_text():
            found.append("address block")
        found += [str(p) for p in shared.glob("*") if not p.name.startswith(".")
                  and p.name != "addresses.json"]
        return found


@pytest.fixture(scope="module")
def slurm_vm(libvirtd, test_pool, job_user):
    root = Path(tempfile.mkdtemp(prefix="vtorque-slurm-vm-", dir="/var/tmp"))
    root.chmod(0o755)
    cluster = SlurmVmCluster(root)
    # A private copy of the test image, so a test can withdraw it.
    pool = root / "pool"
    pool.mkdir(mode=0o755)
    for name in ("testguest.vmlinuz", "testguest.initrd", "testguest.yaml"):
        shutil.copy2(Path(POOL) / name, pool / name)
    secret = root / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    cluster.workdir.mkdir()
    os.chown(cluster.workdir, JOB_UID, JOB_UID)
    cluster.config_path.write_text(yaml.safe_dump({
        "image_pool": str(pool), "state_dir": str(root / "state"),
        "ramdisk_dir": str(root / "ramdisk"), "log_file": str(root / "vtorque.log"),
        "hypervisor": "qemu", "min_free_space": "64M", "secret_file": str(secret),
        "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": "testguest", "ram": "256M"},
        "timeouts": {"provision": 150, "guest_ready": 120, "teardown": 30},
        "network": {"mode": "network", "name": "vtorque", "pool_first": 60, "pool_last": 90},
        "batch": {"system": "slurm", "bin_dir": "/usr/bin", "job_shell": str(root / "job-shell"),
                  "shared_state_dir": str(root / "shared"), "max_requeues": 2}}))
    hooks = root / "hooks"
    subprocess.run([str(REPO / "contrib" / "slurm" / "install"), "--dir", str(hooks),
                    "--python", sys.executable, "--config", str(cluster.config_path),
                    "--job-shell", str(root / "job-shell")],
                   check=True, capture_output=True, text=True, timeout=60)
    first = random.randrange(10000, 90000) * 10     # ids unique to this cluster
    subprocess.run([SCRIPT, "start", "--dir", str(root / "slurm"), "--prolog",
                    str(hooks / "prolog"), "--epilog", str(hooks / "epilog"),
                    "--first-job-id", str(first)],
                   check=True, capture_output=True, text=True, timeout=120)
    try:
        yield cluster
    finally:
        subprocess.run([SCRIPT, "stop", "--dir", str(root / "slurm"), "--purge"],
                       capture_output=True, timeout=120)
        from vtorque.vm import lifecycle
        cfg = cluster.config
        with Host(cfg.libvirt_uri) as host:
            jobs = {d.job_id for d in host.tagged_domains()}
        for job in jobs:
            if os.path.isdir(cfg.state_dir) and any(job in p for p in os.listdir(cfg.state_dir)):
                lifecycle.down(job, cfg)
        shutil.rmtree(root, ignore_errors=True)


MPI_JOB = """#!/bin/sh
#SBATCH -J vmmpi
#SBATCH -o {out}
#VSUB -vm vms_per_node=2,vcpus=1,ram=256M
cd "$SLURM_SUBMIT_DIR"
echo "rank0=$(hostname) uid=$(id -u)"
mpirun -np 2 ./hello
"""


def submitted_id(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Submitted batch job "), done.stdout
    return done.stdout.split()[-1]


def test_vm_job_runs_mpi_in_its_guests(slurm_vm):
    mpicc = shutil.which("mpicc")
    assert mpicc, "scripts/setup installs libopenmpi-dev"
    subprocess.run([mpicc, "-o", str(slurm_vm.workdir / "hello"),
                    str(REPO / "tests" / "mpi" / "hello.c")], check=True, timeout=120)
    os.chown(slurm_vm.workdir / "hello", JOB_UID, JOB_UID)
    out = slurm_vm.workdir / "mpi.out"
    job = submitted_id(slurm_vm.vsub(MPI_JOB.format(out=out), "-vm", "img=testguest"))
    info = slurm_vm.wait(f"job {job} finished",
                         lambda: (j := slurm_vm.job(job))["JobState"] in FINISHED and j)
    text = out.read_text() if out.exists() else ""
    assert info["JobState"] == "COMPLETED", info["_raw"] + text
    assert f"rank0=vt{job}-0 uid={JOB_UID}" in text
    hosts = sorted(line.split("host=")[1] for line in text.splitlines() if "host=" in line)
    assert hosts == [f"vt{job}-0", f"vt{job}-1"]
    # The test image opts in to snapshot starts: the prolog built the node's template and
    # restored both guests from it; the job's record says so.
    assert "restored=2/2" in slurm_vm.job(job)["_raw"], info["_raw"]
    slurm_vm.wait("teardown", lambda: slurm_vm.leftovers(job) == [], timeout=60)


def test_image_withdrawn_after_submit_cancels_without_draining(slurm_vm):
    descriptor = Path(slurm_vm.config.image_pool) / "testguest.yaml"
    saved = descriptor.read_text()
    job = submitted_id(slurm_vm.vsub("#!/bin/sh\necho never\n", "-H", "-vm", "img=testguest"))
    descriptor.unlink()
    try:
        slurm_vm.slurm("scontrol", "release", job)
        info = slurm_vm.wait(f"job {job} ended",
                             lambda: (j := slurm_vm.job(job))["JobState"] in FINISHED and j)
    finally:
        descriptor.write_text(saved)
        descriptor.chmod(0o644)
    assert info["JobState"] == "CANCELLED", info["_raw"]
    assert "not in the authorized image pool" in info["_raw"]
    assert slurm_vm.node_state() in ("idle", "mix", "alloc")
    assert "drain" not in slurm_vm.node_state()
    slurm_vm.wait("teardown", lambda: slurm_vm.leftovers(job) == [], timeout=60)


@contextlib.contextmanager
def requeued_held(slurm_vm: SlurmVmCluster, change):
    """Submit a held VM job, break the node's config with `change(config dict)`, release
    the job and wait until Slurm requeued it held; yields (job id, its record). Restores
    the config, cancels the job and puts the node back in service afterwards."""
    text = slurm_vm.config_path.read_text()
    broken = yaml.safe_load(text)
    change(broken)
    job = submitted_id(slurm_vm.vsub("#!/bin/sh\necho never\n", "-H", "-vm", "img=testguest"))
    slurm_vm.config_path.write_text(yaml.safe_dump(broken))
    node = slurm_vm.node()
    try:
        slurm_vm.slurm("scontrol", "release", job)
        info = slurm_vm.wait(f"job {job} requeued held",
                             lambda: (j := slurm_vm.job(job))["JobState"] == "PENDING"
                             and "held" in j.get("Reason", "") and j, timeout=120)
        yield job, info
    finally:
        slurm_vm.config_path.write_text(text)
        slurm_vm.slurm("scancel", job, check=False)
        slurm_vm.slurm("scontrol", "update", f"nodename={node}", "state=resume", check=False)
    slurm_vm.wait("node back in service", lambda: "drain" not in slurm_vm.node_state(), 60)


def test_node_fault_drains_and_requeues_held(slurm_vm):
    def unreachable_libvirt(cfg: dict) -> None:
        cfg["libvirt_uri"] = "qemu:///system?socket=/nonexistent/libvirt-sock"

    with requeued_held(slurm_vm, unreachable_libvirt) as (job, info):
        assert info["JobState"] == "PENDING", info["_raw"]
        assert "cannot connect to libvirt" in info["_raw"]
        reasons = slurm_vm.slurm("sinfo", "-R", "-h", "-o", "%E").stdout
        assert "vtorque" in reasons and "drain" in slurm_vm.node_state()
        assert slurm_vm.leftovers(job) == []


def test_scancel_during_provisioning_leaves_nothing(slurm_vm):
    job = submitted_id(slurm_vm.vsub("#!/bin/sh\nsleep 30\n", "-vm", "img=testguest"))
    cfg = slurm_vm.config

    def provisioning() -> bool:
        with Host(cfg.libvirt_uri) as host:
            return bool(host.tagged_domains(job))
    slurm_vm.wait("guests starting", provisioning, timeout=120)
    slurm_vm.slurm("scancel", job)
    slurm_vm.wait(f"job {job} ended",
                  lambda: slurm_vm.job(job)["JobState"] in FINISHED, timeout=120)
    slurm_vm.wait("nothing left", lambda: slurm_vm.leftovers(job) == [], timeout=120)
    assert "drain" not in slurm_vm.node_state()


def test_bad_requests_never_reach_sbatch(slurm_vm):
    before = slurm_vm.slurm("squeue", "-h", "-o", "%i").stdout.split()
    for bad in ("vcpu=2", "vcpus=0", "img=../../etc/passwd", "ram=1T", "vcpus=1,vcpus=2"):
        done = slurm_vm.vsub("#!/bin/sh\necho never\n", "-vm", bad)
        assert done.returncode == 1, (bad, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert done.stdout == ""
    assert slurm_vm.slurm("squeue", "-h", "-o", "%i").stdout.split() == before


def test_guest_that_never_answers_requeues_held_and_leaves_nothing(slurm_vm):
    def impatient(cfg: dict) -> None:
        cfg["timeouts"]["guest_ready"] = 1      # no guest boots in 1 s under TCG

    with requeued_held(slurm_vm, impatient) as (job, info):
        assert "did not answer within 1 s" in info["_raw"]
        slurm_vm.wait("nothing left", lambda: slurm_vm.leftovers(job) == [], timeout=60)


def cpu_ids(text: str) -> set[int]:
    """`0-1,3` -> {0, 1, 3}."""
    found: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        found.update(range(int(low), int(high or low) + 1))
    return found


def test_pinned_vcpus_use_only_the_cores_slurm_gave_the_job(slurm_vm):
    """Another job holds a core of the node first: the VM job's pinned vCPU goes to the
    core Slurm gave it, never to the other job's."""
    other = slurm_vm.slurm("sbatch", "--parsable", "-n", "1", "--mem=64M", "--wrap",
                           "sleep 120").stdout.strip()
    slurm_vm.wait("the other job running",
                  lambda: slurm_vm.job(other)["JobState"] == "RUNNING", timeout=60)
    job = submitted_id(slurm_vm.vsub("#!/bin/sh\nsleep 60\n", "-vm",
                                     "img=testguest,vcpus=1,vcpu_pinning=yes"))
    try:
        with Host("qemu:///system") as host:
            [domain] = slurm_vm.wait("the guest running",
                                     lambda: host.tagged_domains(job), timeout=120)
        xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", domain.name],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        pins = [cpu_ids(p.get("cpuset")) for p in ET.fromstring(xml).iter("vcpupin")]
        detail = slurm_vm.slurm("scontrol", "show", "job", "-dd", job).stdout
        [allocated] = [w.split("=", 1)[1] for w in detail.split() if w.startswith("CPU_IDs=")]
        held = slurm_vm.slurm("scontrol", "show", "job", "-dd", other).stdout
        [theirs] = [w.split("=", 1)[1] for w in held.split() if w.startswith("CPU_IDs=")]
        assert pins and all(p <= cpu_ids(allocated) for p in pins), (pins, allocated)
        assert not any(p & cpu_ids(theirs) for p in pins), (pins, theirs)
    finally:
        slurm_vm.slurm("scancel", job, other, check=False)
    slurm_vm.wait("nothing left", lambda: slurm_vm.leftovers(job) == [], timeout=120)
