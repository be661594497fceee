#!/usr/bin/env python3
"""The main demo: a one-machine cluster running an MPI job inside per-job VMs.

    scripts/demo [--scheduler slurm|torque|openpbs] [--keep]

Slurm (the default): munge, slurmctld and slurmd (scripts/slurm-cluster, loopback only, a
private directory) with vtorque's Prolog and Epilog. Torque: pbs_server, pbs_sched,
trqauthd and two moms built from source (scripts/torque-cluster), the hooks in every
mom_priv. OpenPBS: PostgreSQL, the server, scheduler, pbs_comm and two MoMs built from
source (scripts/openpbs-cluster), vtorque's hook imported with qmgr. libvirtd runs inside
a private network namespace (scripts/netns-libvirtd). The demo submits an MPI job with
-vm requests through vsub as an ordinary user, follows it with `vtorque status`
(provisioning, running, teardown), prints what its guests said and a summary, and checks
that nothing is left. Everything it started is stopped at the end unless --keep is given.
Run through scripts/demo, which installs what is needed first.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from vtorque import config as config_mod  # noqa: E402
from vtorque.journal import JobPaths  # noqa: E402
from vtorque.vm.host import Host  # noqa: E402

WORK = Path("/var/tmp/vtorque-demo")
USER, UID = "vtjob", 4242
POOL = os.environ.get("VTORQUE_TEST_POOL", "/var/lib/vtorque/test-images")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}

JOB = """#!/bin/sh
#SBATCH -J vm-mpi-demo
#SBATCH -o {out}
#VSUB -vm {request},vms_per_node=2
# Everything below runs inside guest rank 0, as the job's owner.
echo "job script on $(hostname) as $(id -un) (uid $(id -u)), kernel $(uname -r)"
echo "guests of this job: $(sort -u "$PBS_NODEFILE" | tr '\\n' ' ')"
cd "$SLURM_SUBMIT_DIR"
mpirun -np 2 ./hello
"""


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 300)
    return subprocess.run(argv, **kwargs)


class Demo:
    def __init__(self, image: str = "testguest") -> None:
        self.image = image
        self.slurm_env = {"PATH": "/usr/bin:/bin:/usr/sbin",
                          "SLURM_CONF": str(WORK / "slurm" / "slurm.conf")}
        self.started_libvirtd = False
        self.created_user = False

    def slurm(self, *argv: str) -> str:
        return run(list(argv), env=self.slurm_env).stdout

    def job(self, job_id: str) -> dict[str, str]:
        out = self.slurm("scontrol", "show", "job", "-o", job_id)
        fields: dict[str, str] = {}
        for word in out.split():
            key, _, value = word.partition("=")
            fields.setdefault(key, value)
        return fields

    def setup(self) -> config_mod.Config:
        status = run([str(REPO / "scripts/netns-libvirtd"), "status", "vtorque-dev"],
                     check=False)
        self.started_libvirtd = status.returncode != 0
        run([str(REPO / "scripts/netns-libvirtd"), "start", "vtorque-dev"])
        self.created_user = ensure_user()
        WORK.mkdir(mode=0o755, exist_ok=True)
        WORK.chmod(0o755)
        secret = WORK / "secret"
        if not secret.exists():
            secret.write_bytes(os.urandom(32))
        secret.chmod(0o600)
        work = WORK / "work"
        work.mkdir(exist_ok=True)
        os.chown(work, UID, UID)
        config_path = WORK / "vtorque.yaml"
        config_path.write_text(yaml.safe_dump({
            "image_pool": POOL, "state_dir": str(WORK / "state"),
            "ramdisk_dir": "/dev/shm/vtorque-demo", "log_file": str(WORK / "vtorque.log"),
            "hypervisor": "qemu", "min_free_space": "256M", "secret_file": str(secret),
            "host_reserve": {"cores": 0, "memory": "512M"},
            "defaults": {"img": self.image, "ram": "256M"},
            "network": {"mode": "network", "name": "vtorque", "pool_first": 20,
                        "pool_last": 59},
            "batch": {"system": "slurm", "bin_dir": "/usr/bin",
                      "job_shell": str(WORK / "job-shell"),
                      "shared_state_dir": str(WORK / "shared")}}))
        run([str(REPO / "contrib/slurm/install"), "--dir", str(WORK / "hooks"),
             "--python", sys.executable, "--config", str(config_path),
             "--job-shell", str(WORK / "job-shell")])
        run([str(REPO / "scripts/slurm-cluster"), "start", "--dir", str(WORK / "slurm"),
             "--prolog", str(WORK / "hooks/prolog"), "--epilog", str(WORK / "hooks/epilog"),
             "--first-job-id", str(int(time.time()) % 90000 + 1000)])
        mpicc = shutil.which("mpicc") or "/usr/bin/mpicc"
        run([mpicc, "-o", str(work / "hello"), str(REPO / "tests/mpi/hello.c")])
        os.chown(work / "hello", UID, UID)
        return config_mod.load(str(config_path))

    def submit(self, config: config_mod.Config) -> tuple[str, Path, float]:
        work = WORK / "work"
        out = work / "demo.out"
        out.unlink(missing_ok=True)
        script = work / "job.sh"
        script.write_text(JOB.format(out=out, request=vm_request(self.image)))
        os.chown(script, UID, UID)
        env = {**self.slurm_env, "HOME": f"/home/{USER}", "PYTHONPATH": str(REPO),
               "VTORQUE_CONFIG": str(config.path)}
        argv = [sys.executable, "-m", "vtorque.submit.vsub", str(script)]
        say(f"submitting as {USER}: vsub job.sh   (script has: #VSUB -vm "
            f"{vm_request(self.image)},vms_per_node=2)")
        submitted = time.monotonic()
        done = run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--init-groups", "--",
                    *argv], env=env, cwd=work, check=False)
        if done.returncode != 0:
            raise SystemExit(f"vsub failed: {done.stderr.strip()}")
        print(done.stdout.strip())
        return done.stdout.split()[-1], out, submitted

    def follow(self, job_id: str, config: config_mod.Config, submitted: float) -> dict:
        phases: dict[str, float] = {}
        last = ""
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            info = self.job(job_id)
            state = info.get("JobState", "?")
            with Host(config.libvirt_uri) as host:
                guests = host.tagged_domains(job_id)
            view = owner_status(job_id, {**self.slurm_env,
                                         "VTORQUE_CONFIG": str(config.path)})
            phase = view.get("phase", "?")
            line = f"{phase} ({len(guests)} guest(s) up)   (vtorque status: " \
                   f"{view.get('detail') or phase})"
            if line != last:
                say(f"job {job_id}: {line}")
                phases.setdefault(phase, time.monotonic() - submitted)
                last = line
            if state in FINISHED:
                info["_phases"] = phases
                return info
            time.sleep(0.5)
        raise SystemExit(f"job {job_id} did not finish in 10 minutes")

    def prolog_lines(self, job_id: str) -> list[str]:
        log = WORK / "vtorque.log"
        if not log.exists():
            return []
        return [ln for ln in log.read_text().splitlines() if f"job {job_id}:" in ln]

    def leftovers(self, job_id: str, config: config_mod.Config) -> list[str]:
        found = []
        with Host(config.libvirt_uri) as host:
            found += [d.name for d in host.tagged_domains(job_id)]
        paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
        found += [p for p in (paths.job_dir, paths.user_dir, paths.lock, paths.ramdisk_dir)
                  if os.path.lexists(p)]
        shared = Path(config.batch.shared_state_dir)
        found += [str(p) for p in shared.glob("*") if not p.name.startswith(".")
                  and p.name != "addresses.json"]
        addresses = shared / "addresses.json"
        if addresses.exists() and f'"{job_id}"' in addresses.read_text():
            found.append("the job's address block")
        return found

    def stop(self, keep: bool) -> None:
        if keep:
            say("--keep: the Slurm cluster and libvirtd stay up "
                f"(SLURM_CONF={WORK}/slurm/slurm.conf)")
            return
        run([str(REPO / "scripts/slurm-cluster"), "stop", "--dir", str(WORK / "slurm")],
            check=False)
        if self.started_libvirtd:
            run([str(REPO / "scripts/netns-libvirtd"), "stop", "vtorque-dev"], check=False)
        if self.created_user:
            run(["userdel", "--remove", USER], check=False)
        say("stopped everything the demo started")


PBS_JOB = """#!/bin/sh
#PBS -N vm-mpi-demo
{resources}
#PBS -o {out}
#PBS -j oe
#PBS -vm {request}
# Everything below runs inside guest rank 0, as the job's owner.
echo "job script on $(hostname) as $(id -un) (uid $(id -u)), kernel $(uname -r)"
echo "guests of this job: $(sort -u "$PBS_NODEFILE" | tr '\\n' ' ')"
cd "$PBS_O_WORKDIR"
mpirun -np 2 ./hello
"""
# What each guest gets: the test guest borrows the node's root; a cloud image boots its
# own systemd and cloud-init, and wants more memory.
GUEST = {"testguest": "vcpus=1,ram=256M"}
CLOUD_GUEST = "vcpus=1,ram=768M"


def vm_request(image: str) -> str:
    return f"img={image},{GUEST.get(image, CLOUD_GUEST)}"


RESOURCES = {"torque": "#PBS -l nodes=2:ppn=1",
             "openpbs": "#PBS -l select=2:ncpus=1\n#PBS -l place=scatter"}


class PbsDemo:
    """Torque or OpenPBS built from source, two nodes on this machine, one guest each."""

    def __init__(self, scheduler: str, image: str = "testguest") -> None:
        from tests.e2e import real_batch
        self.scheduler = scheduler
        self.image = image
        self.kind = (real_batch.TorqueCluster if scheduler == "torque"
                     else real_batch.OpenPBSCluster)
        self.started_libvirtd = False
        self.started_cluster = False
        self.created_user = False
        self.cluster = None

    def setup(self) -> None:
        status = run([str(REPO / "scripts/netns-libvirtd"), "status", "vtorque-dev"],
                     check=False)
        self.started_libvirtd = status.returncode != 0
        run([str(REPO / "scripts/netns-libvirtd"), "start", "vtorque-dev"])
        self.created_user = ensure_user()
        running = run([str(self.kind.script), "status"], check=False)
        self.started_cluster = running.returncode != 0
        say(f"starting {self.scheduler} from its cached build (the first run builds it)")
        root = WORK / self.scheduler
        shutil.rmtree(root, ignore_errors=True)
        self.cluster = self.kind.start(root, POOL)
        mpicc = shutil.which("mpicc") or "/usr/bin/mpicc"
        hello = self.cluster.workdir / "hello"
        run([mpicc, "-o", str(hello), str(REPO / "tests/mpi/hello.c")])
        os.chown(hello, UID, UID)

    def submit(self) -> tuple[str, Path, float]:
        out = self.cluster.workdir / "demo.out"
        out.unlink(missing_ok=True)
        script = PBS_JOB.format(resources=RESOURCES[self.scheduler], out=out,
                                request=vm_request(self.image))
        say(f"submitting as {USER}: vsub job.sh   (script has: #PBS -vm "
            f"{vm_request(self.image)}; one guest on each of two nodes)")
        submitted = time.monotonic()
        done = self.cluster.vsub(script=script, name="job.sh")
        if done.returncode != 0:
            raise SystemExit(f"vsub failed: {done.stderr.strip()}")
        print(done.stdout.strip())
        return done.stdout.strip(), out, submitted

    def follow(self, job_id: str) -> dict:
        phases: dict[str, float] = {}
        last = ""
        started = time.monotonic()
        deadline = started + 600
        while time.monotonic() < deadline:
            job = self.cluster.job(job_id) or {}
            view = owner_status(job_id, self.cluster.user_env())
            line = view.get("phase", "?")
            if view.get("detail"):
                line += f": {view['detail']}"
            if line != last:
                say(f"job {job_id}: {line}   (vtorque status)")
                phases.setdefault(view.get("phase", "?"), time.monotonic() - started)
                last = line
            if job and self.cluster.finished(job):
                job["_phases"] = phases
                return job
            time.sleep(1.0)
        raise SystemExit(f"job {job_id} did not finish in 10 minutes")

    def stop(self, keep: bool) -> None:
        if keep:
            say(f"--keep: {self.scheduler} and libvirtd stay up")
            return
        if self.started_cluster:
            run([str(self.kind.script), "stop"], check=False)
        shutil.rmtree(WORK / self.scheduler, ignore_errors=True)
        if self.started_libvirtd:
            run([str(REPO / "scripts/netns-libvirtd"), "stop", "vtorque-dev"], check=False)
        if self.created_user:
            run(["userdel", "--remove", USER], check=False)
        say("stopped everything the demo started")


def owner_status(job_id: str, env: dict) -> dict:
    """`vtorque status JOB --json` as the job's owner, as a user would watch the job."""
    import json
    done = run(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--init-groups", "--",
                sys.executable, "-m", "vtorque", "status", job_id, "--json"],
               env={**env, "HOME": f"/home/{USER}", "PYTHONPATH": str(REPO)}, check=False,
               cwd="/")
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"phase": "unknown", "detail": done.stderr.strip()}


def ensure_user() -> bool:
    """The ordinary user who submits; True when the demo created it."""
    try:
        pwd.getpwnam(USER)
        return False
    except KeyError:
        run(["useradd", "--create-home", "--uid", str(UID), "--user-group", "--shell",
             "/bin/sh", USER])
        return True


def pbs_main(scheduler: str, image: str, keep: bool) -> int:
    demo = PbsDemo(scheduler, image)
    ok = False
    try:
        say(f"starting libvirtd (private network namespace) and a two-node {scheduler} "
            "cluster")
        demo.setup()
        job_id, out, _ = demo.submit()
        job = demo.follow(job_id)
        status = job.get("exit_status", job.get("Exit_status"))
        say(f"job {job_id} finished, exit status {status}")
        cluster = demo.cluster
        cluster.wait("the output file", lambda: out.exists(), timeout=60)
        print("----- job output (from inside the guests) -----")
        print(out.read_text(), end="")
        print("-----------------------------------------------")
        hosts = sorted(set(re.findall(r"host=(\S+)", out.read_text())))
        say("summary:")
        print(f"  nodes: {', '.join(cluster.nodes)}   guests: {len(hosts)} answered MPI "
              f"({', '.join(hosts)})")
        for phase, seconds in job["_phases"].items():
            print(f"  {seconds:6.1f} s after submission: {phase}")
        for node in cluster.nodes:
            for line in cluster.node_log(node).splitlines():
                if f"job {job_id}:" in line and "ready on" in line:
                    print("  node log: " + line.split(" INFO ", 1)[-1])
        deadline = time.monotonic() + 120
        left = cluster.leftovers(job_id)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = cluster.leftovers(job_id)
        if left:
            say("LEFT BEHIND: " + ", ".join(left))
        else:
            say("nothing left on any node: no guest, no job file, no key, no address block")
        ok = str(status) == "0" and len(hosts) == 2 and not left
    finally:
        demo.stop(keep)
    say("demo ok" if ok else "demo FAILED")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", choices=("slurm", "torque", "openpbs"),
                        default="slurm", help="the batch system to run the job through")
    parser.add_argument("--image", default="testguest",
                        help="the guests' image in the test pool: testguest (the default) "
                             "or debian12, the Debian 12 cloud image scripts/setup builds")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it starts libvirtd and the batch system)")
    if not (Path(POOL) / f"{args.image}.yaml").is_file():
        raise SystemExit(f"demo: no image {args.image!r} in {POOL} (scripts/setup builds "
                         "testguest and debian12)")
    if args.scheduler != "slurm":
        return pbs_main(args.scheduler, args.image, args.keep)
    demo = Demo(args.image)
    ok = False
    try:
        say("starting libvirtd (private network namespace) and a one-node Slurm cluster")
        config = demo.setup()
        job_id, out, submitted = demo.submit(config)
        info = demo.follow(job_id, config, submitted)
        say(f"job {job_id} {info['JobState']}, exit code {info.get('ExitCode')}")
        print("----- job output (from inside the guests) -----")
        print(out.read_text() if out.exists() else "(no output file)", end="")
        print("-----------------------------------------------")
        ready = [ln for ln in demo.prolog_lines(job_id) if "ready on" in ln]
        hosts = sorted(set(re.findall(r"host=(\S+)", out.read_text()))) if out.exists() \
            else []
        phases = info["_phases"]
        say("summary:")
        print(f"  nodes: {info.get('NodeList')}   guests: {len(hosts)} answered MPI "
              f"({', '.join(hosts)})")
        for phase, seconds in phases.items():
            print(f"  {seconds:6.1f} s after submission: {phase}")
        for line in ready:
            print("  node log: " + line.split(" INFO ", 1)[-1])
        demo.slurm("scontrol", "show", "job", job_id)  # still known (MinJobAge)
        deadline = time.monotonic() + 120
        left = demo.leftovers(job_id, config)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = demo.leftovers(job_id, config)
        if left:
            say("LEFT BEHIND: " + ", ".join(left))
        else:
            say("nothing left: no guest, no job file, no key, no address block")
        ok = info["JobState"] == "COMPLETED" and len(hosts) == 2 and not left
    finally:
        demo.stop(args.keep)
    say("demo ok" if ok else "demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
