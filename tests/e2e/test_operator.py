"""The operator's and the user's tools against real things: `vtorque doctor` on this
machine checked against what is true here; an image added with `vtorque image add` runs a
real Slurm job (one small guest), which its owner watches with `vtorque status` and logs
into with `vtorque ssh`, while anyone else is refused; `vtorque image add` refuses a
backing-file image; the hooks' metrics file parses afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.accounts import JOB_UID, JOB_USER
from tests.e2e.conftest import POOL, REPO
from tests.e2e.slurm_nodes import slurm_nodes, submitted_id

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

ADDED = "operator-guest"
NOBODY = 65534


class Operator:
    def __init__(self, cluster):
        self.cluster = cluster
        self.node = cluster.nodes[0]
        self.config_path = cluster.config_path(self.node)
        self.pool = cluster.root / "pool"

    @property
    def config(self):
        return self.cluster.config(self.node)

    def vtorque(self, *args: str, uid: int | None = None, timeout: float = 120
                ) -> subprocess.CompletedProcess:
        """`vtorque --config ... ARGS` as root or, with uid, as that user."""
        env = {**self.cluster.env, "PYTHONPATH": str(REPO),
               "HOME": f"/home/{JOB_USER}" if uid == JOB_UID else "/"}
        argv = [sys.executable, "-m", "vtorque", "--config", str(self.config_path), *args]
        if uid is not None:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}",
                    "--init-groups" if uid == JOB_UID else "--clear-groups", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              cwd="/")


@pytest.fixture(scope="module")
def op(libvirtd, test_pool, job_user):
    with slurm_nodes("vtorque-operator-", 1, img=ADDED, ram="256M", pool_first=200,
                     pool_last=209) as cluster:
        operator = Operator(cluster)
        operator.pool.mkdir(mode=0o755)
        data = yaml.safe_load(operator.config_path.read_text())
        data["image_pool"] = str(operator.pool)          # empty: `image add` fills it
        operator.config_path.write_text(yaml.safe_dump(data))
        yield operator


def kvm_boots_a_kernel(seconds: float = 20.0) -> bool:
    """The truth, found another way than doctor's probe: does the test guest's kernel get
    as far as printing its banner under -accel kvm?"""
    with tempfile.TemporaryDirectory() as tmp:
        serial = Path(tmp) / "serial"
        try:
            subprocess.run(["qemu-system-x86_64", "-accel", "kvm", "-machine", "pc",
                            "-nodefaults", "-display", "none", "-m", "256", "-no-reboot",
                            "-serial", f"file:{serial}",
                            "-kernel", f"{POOL}/testguest.vmlinuz",
                            "-append", "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"],
                           capture_output=True, timeout=seconds)
        except subprocess.TimeoutExpired:
            pass
        return "Linux version" in (serial.read_text(errors="replace")
                                   if serial.exists() else "")


def doctor(op, config: Path) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "vtorque", "--config", str(config), "doctor",
                           "--json", "--hooks", str(op.cluster.root / op.node / "hooks")],
                          capture_output=True, text=True, timeout=300,
                          env={**op.cluster.env, "PYTHONPATH": str(REPO)})
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert done.returncode == (1 if any(c["status"] == "fail" for c in checks.values())
                               else 0)
    return done.returncode, checks


def test_doctor_tells_the_truth_about_this_machine(op):
    kvm_works = os.path.exists("/dev/kvm") and kvm_boots_a_kernel()
    data = yaml.safe_load(op.config_path.read_text())
    data["hypervisor"] = "auto"            # what a site gets by default
    auto = op.cluster.root / "auto.yaml"
    auto.write_text(yaml.safe_dump(data))
    kvm = doctor(op, auto)[1]["kvm"]
    if not os.path.exists("/dev/kvm"):
        assert kvm["status"] == "ok" and "TCG" in kvm["detail"]
    elif kvm_works:
        assert kvm["status"] == "ok", kvm
    else:
        assert kvm["status"] == "fail" and "hangs" in kvm["detail"], kvm
        assert "hypervisor: qemu" in kvm["fix"]
    _, checks = doctor(op, op.config_path)                 # hypervisor: qemu (TCG)
    if os.path.exists("/dev/kvm") and not kvm_works:
        assert checks["kvm"]["status"] == "warn" and "guests run under TCG" in \
            checks["kvm"]["detail"]
    version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                             text=True, timeout=30).stdout.splitlines()[0]
    assert checks["qemu"]["status"] == "ok" and version in checks["qemu"]["detail"]
    import libvirt
    conn = libvirt.open("qemu:///system")
    try:
        lib = conn.getLibVersion()
    finally:
        conn.close()
    daemon = f"libvirtd {lib // 1000000}.{lib // 1000 % 1000}.{lib % 1000}"
    assert checks["libvirt"]["status"] == "ok" and daemon in checks["libvirt"]["detail"]
    assert checks["network"]["status"] == "ok" and "vtorque active" in \
        checks["network"]["detail"]
    assert checks["secret"]["status"] == "ok"
    assert checks["batch"]["status"] == "ok"
    # The shims point at this installation, but this test cluster's slurm.conf runs a
    # dispatcher in front of them (one slurm.conf for simulated machines): that is true.
    hooks = checks["hooks"]
    assert hooks["status"] == "fail" and "does not run" in hooks["detail"], hooks
    assert checks["job shell"]["status"] == "fail"       # batch.job_shell is the dispatcher
    free = shutil.disk_usage(op.config.state_dir if os.path.exists(op.config.state_dir)
                             else "/var/tmp").free >> 20
    shown = int(checks["space state_dir"]["detail"].split(": ")[1].split("M")[0])
    assert abs(shown - free) < 1024
    ib = os.path.isdir("/sys/class/infiniband") and os.listdir("/sys/class/infiniband")
    assert ("no InfiniBand" in checks["rdma"]["detail"]) == (not ib)
    with open("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages") as handle:
        total = int(handle.read())
    assert f"2 MiB pages: {total} in all" in checks["huge pages"]["detail"]


def test_image_add_refuses_a_backing_file(op, tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(b"\0" * 65536)
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(overlay)], check=True, timeout=60)
    before = sorted(os.listdir(op.pool))
    done = op.vtorque("image", "add", "with-backing", str(overlay), "--format", "qcow2",
                      "--distro", "debian")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "vtorque: image 'with-backing': disk " \
                          f"{overlay} has a backing file\n"
    assert sorted(os.listdir(op.pool)) == before


# The job waits (bounded) until its owner releases it from inside the guest, over
# `vtorque ssh`.
RELEASE = "/tmp/vtorque-release"
JOB = f"""#!/bin/sh
#SBATCH -J operator
#SBATCH -o {{out}}
echo "rank0=$(hostname)"
i=0
while [ ! -e {RELEASE} ] && [ $i -lt 200 ]; do sleep 1; i=$((i + 1)); done
[ -e {RELEASE} ] && echo "released by its owner"
"""


def test_an_added_image_runs_a_job_its_owner_watches_and_logs_into(op):
    cluster = op.cluster
    added = op.vtorque("image", "add", ADDED, f"{POOL}/testguest.vmlinuz", "--kind", "kernel",
                       "--initrd", f"{POOL}/testguest.initrd", "--cmdline",
                       "console=ttyS0 panic=-1 quiet", "--distro", "debian", "--host-share")
    assert added.returncode == 0, added.stderr
    kernel_sha = hashlib.sha256(Path(POOL, "testguest.vmlinuz").read_bytes()).hexdigest()
    assert f"sha256 {kernel_sha}" in added.stdout
    out = cluster.workdir / "operator.out"
    job = submitted_id(cluster.vsub(JOB.format(out=out), "-vm", f"img={ADDED}"))
    released = False
    try:
        phases = []

        def running():
            done = op.vtorque("status", job, "--json", uid=JOB_UID)
            assert done.returncode == 0, done.stderr
            view = json.loads(done.stdout)
            if not phases or phases[-1] != view["phase"]:
                phases.append(view["phase"])
            return view["phase"] == "running" and view
        view = cluster.wait(f"job {job} running", running, timeout=240)
        assert set(phases) <= {"queued", "provisioning", "running"}, phases
        print(f"job {job} phases seen by its owner: {' -> '.join(phases)}")
        assert view["owner"] == JOB_USER and view["detail"].startswith(
            f"the job script runs in guest rank 0 (vt{job}-0 on ")
        [guest] = view["nodes"][0]["guests"]
        assert guest["hostname"] == f"vt{job}-0" and guest["state"] == "running"
        assert guest["address"].startswith("192.168.122.")
        # Image, digest and boot time come from the node's events, in root's log: root sees
        # them (the job's owner too once the nodes publish them with their guests).
        root_view = cluster.wait("the ready event", lambda: (v := json.loads(
            op.vtorque("status", job, "--json").stdout))["image"] and v, timeout=60)
        [node] = root_view["nodes"]
        [guest] = node["guests"]
        assert (guest["image"], guest["digest"]) == (ADDED, kernel_sha)
        assert guest["state"] == "running" and node["boot_seconds"] > 0
        text = op.vtorque("status", job, uid=JOB_UID).stdout
        print(text)
        assert f"job {job} ({JOB_USER}): running" in text
        listing = op.vtorque("status")                         # root sees every job
        assert any(line.split("\t")[:3] == [job, JOB_USER, "running"]
                   for line in listing.stdout.splitlines()), listing.stdout

        other = op.vtorque("status", job, uid=NOBODY)
        assert other.returncode == 1 and other.stderr == \
            f"vtorque: job {job} belongs to another user; users see only their own jobs\n"
        ssh = op.vtorque("ssh", job, "--", "hostname", uid=JOB_UID, timeout=180)
        assert (ssh.returncode, ssh.stdout.strip()) == (0, f"vt{job}-0"), ssh.stderr
        refused = op.vtorque("ssh", job, "--", "hostname", uid=NOBODY)
        assert refused.returncode == 1 and "only its owner may log into" in refused.stderr
        console = op.vtorque("console", job)
        assert console.returncode == 0 and "vtorque-ready" in console.stdout
        assert "\x1b" not in console.stdout
        busy = op.vtorque("image", "remove", ADDED)
        assert busy.returncode == 1 and f"used by running job(s) {job}" in busy.stderr
        listed = json.loads(op.vtorque("image", "list", "--json").stdout)
        assert [(r["name"], r["jobs"], r["digest"]) for r in listed] == \
            [(ADDED, [job], kernel_sha)]
        release = op.vtorque("ssh", job, "0", "--", "touch", RELEASE, uid=JOB_UID,
                             timeout=180)
        assert release.returncode == 0, release.stderr
        released = True
    finally:
        if not released:
            cluster.slurm("scancel", job, check=False)
    info = cluster.finished(job, 240)
    text = out.read_text() if out.exists() else ""
    assert info["JobState"] == "COMPLETED", info["_raw"] + text + cluster.logs()
    assert f"rank0=vt{job}-0" in text and "released by its owner" in text
    cluster.wait("nothing left", lambda: cluster.leftovers(job) == [], timeout=120)
    done = json.loads(op.vtorque("status", job, "--json", uid=JOB_UID).stdout)
    assert done["phase"] == "done", done

    metrics = Path(op.config.state_dir, ".metrics", "vtorque.prom").read_text()
    samples = {s.name + json.dumps(s.labels, sort_keys=True): s.value
               for f in text_string_to_metric_families(metrics) for s in f.samples}
    assert samples['vtorque_provision_seconds_count{}'] >= 1
    assert samples['vtorque_teardowns_total{"result": "ok"}'] >= 1
    assert samples['vtorque_decisions_total{"action": "run"}'] >= 1
    assert samples['vtorque_jobs_running{}'] == 0
    removed = op.vtorque("image", "remove", ADDED)
    assert removed.returncode == 0 and os.listdir(op.pool) == [], removed.stderr


def test_an_interactive_vm_session_on_slurm(op):
    """`vsub --interactive`: salloc with the request; once the allocation's guests are up
    the owner's session (here a command instead of a shell) runs in guest rank 0 through
    `vtorque ssh`; the allocation's end leaves nothing."""
    cluster = op.cluster
    added = op.vtorque("image", "add", ADDED, f"{POOL}/testguest.vmlinuz", "--kind", "kernel",
                       "--initrd", f"{POOL}/testguest.initrd", "--cmdline",
                       "console=ttyS0 panic=-1 quiet", "--distro", "debian", "--host-share")
    assert added.returncode == 0, added.stderr
    try:
        env = {**cluster.env, "HOME": f"/home/{JOB_USER}", "PYTHONPATH": str(REPO),
               "VTORQUE_CONFIG": str(op.config_path)}
        done = subprocess.run(["setpriv", f"--reuid={JOB_UID}", f"--regid={JOB_UID}",
                               "--init-groups", "--", sys.executable, "-m",
                               "vtorque.submit.vsub", "--interactive", "-N", "1", "-vm",
                               f"img={ADDED}", "--", "sh", "-c", "hostname; id -un"],
                              capture_output=True, text=True, env=env, cwd=cluster.workdir,
                              stdin=subprocess.DEVNULL, timeout=300)
        granted = [line.split()[-1] for line in done.stderr.splitlines()
                   if line.startswith("salloc: Granted job allocation")]
        assert done.returncode == 0 and granted, done.stdout + done.stderr + cluster.logs()
        [job] = granted
        print(f"vsub --interactive: {done.stdout!r}")
        assert done.stdout.split() == [f"vt{job}-0", JOB_USER], done.stdout + done.stderr
        cluster.wait("nothing left", lambda: cluster.leftovers(job) == [], timeout=120)
    finally:
        op.vtorque("image", "remove", ADDED)
