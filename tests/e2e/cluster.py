"""A simulated Torque cluster on this machine: N nodes sharing libvirtd, the stand-in
server and moms of tests/harness, the hook shims installed by contrib/torque_hooks/install,
and an ordinary user owning the jobs. Used by the Torque and MPI end-to-end tests."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import NETNS, REPO, WORK_ROOT
from tests.harness.pbs_mom import SimNode, TorqueHarness
from tests.standins import install, read_db
from vtorque import config as config_mod
from vtorque.journal import JobPaths
from vtorque.vm.host import Host

JOB_USER = "vtjob"
JOB_UID = 4242


@pytest.fixture(scope="session")
def job_user():
    """An ordinary user to own test jobs, created here if missing. It stays: test sessions
    may run side by side (and real batch servers keep jobs of it in their history), and a
    session that removed it would pull it from under the others."""
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--uid", str(JOB_UID), "--user-group",
                        "--shell", "/bin/sh", JOB_USER], check=True)
    return JOB_USER


class Cluster:
    """N simulated Torque nodes on this machine sharing libvirtd and a shared state dir."""

    def __init__(self, root: Path, pool: str, n_nodes: int, **overrides):
        self.root = root
        self.bin_dir = root / "bin"
        self.db = install("torque", self.bin_dir)
        os.symlink(REPO / "tests" / "standins" / "recording_qsub", self.bin_dir / "qsub")
        secret = root / "secret"
        secret.write_bytes(os.urandom(32))
        secret.chmod(0o600)
        self.workdir = root / "work"
        self.workdir.mkdir()
        os.chown(self.workdir, JOB_UID, JOB_UID)
        self.job_shell = root / "job-shell"
        self.nodes: list[SimNode] = []
        for index in range(n_nodes):
            name = f"node{index + 1}"
            node_dir = root / name
            node_dir.mkdir()
            cfg = {
                "image_pool": pool, "state_dir": str(node_dir / "state"),
                "ramdisk_dir": str(node_dir / "ramdisk"), "log_file": str(node_dir / "log"),
                "node_name": name, "hypervisor": "qemu", "min_free_space": "64M",
                "secret_file": str(secret),
                "host_reserve": {"cores": 0, "memory": "512M"},
                "defaults": {"img": "testguest", "ram": "256M"},
                "timeouts": {"provision": 150, "guest_ready": 120, "teardown": 30},
                "network": {"mode": "network", "name": "vtorque", "subnet": "192.168.122.0/24",
                            "gateway": "192.168.122.1", "pool_first": 100, "pool_last": 199},
                "batch": {"system": "torque", "bin_dir": str(self.bin_dir),
                          "shared_state_dir": str(root / "shared"),
                          "job_shell": str(self.job_shell), "max_requeues": 2},
            }
            for key, value in overrides.items():
                if isinstance(value, dict):
                    cfg.setdefault(key, {}).update(value)
                else:
                    cfg[key] = value
            config_path = node_dir / "vtorque.yaml"
            config_path.write_text(yaml.safe_dump(cfg))
            mom_priv = node_dir / "mom_priv"
            mom_priv.mkdir()
            own_shell = node_dir / "job-shell"
            subprocess.run([str(REPO / "contrib" / "torque_hooks" / "install"),
                            "--mom-priv", str(mom_priv), "--python", sys.executable,
                            "--config", str(config_path), "--job-shell", str(own_shell)],
                           check=True, capture_output=True, text=True)
            self.nodes.append(SimNode(name, mom_priv, config_path, own_shell,
                                      str(self.job_shell)))
        self.harness = TorqueHarness(self.nodes, self.db, NETNS, self.workdir)

    def config(self, index: int = 0):
        return config_mod.load(str(self.nodes[index].config))

    def vsub(self, *args: str, script: str) -> subprocess.CompletedProcess:
        """vsub as the job owner, its qsub being the recording stand-in."""
        calls_file = self.workdir / ".qsub-calls.jsonl"   # qsub runs as the job owner
        env = {"PATH": "/usr/bin:/bin", "HOME": f"/home/{JOB_USER}",
               "VTORQUE_CONFIG": str(self.nodes[0].config),
               "VTORQUE_STANDIN_CALLS": str(calls_file), "PYTHONPATH": str(REPO)}
        return subprocess.run(["setpriv", f"--reuid={JOB_UID}", f"--regid={JOB_UID}",
                               "--init-groups", "--", sys.executable, "-m", "vtorque.submit.vsub",
                               *args], input=script, capture_output=True, text=True,
                              env=env, cwd=self.workdir, timeout=60)

    def vsub_job(self, *args: str, script: str) -> dict:
        """vsub as the job owner, then the stand-in server makes the job it submitted."""
        sub = self.vsub(*args, script=script)
        assert sub.returncode == 0, sub.stderr
        [call] = self.submitted()           # exactly one submission reached qsub
        return self.harness.submit(["qsub", *call["argv"]], call.get("stdin") or script,
                                   JOB_USER)

    def submitted(self) -> list[dict]:
        path = self.workdir / ".qsub-calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] \
            if path.exists() else []

    def leftovers(self, job_id: str) -> list[str]:
        """Everything of the job still on any node: domains, files, keys, addresses."""
        found = []
        with Host("qemu:///system") as host:
            found += [d.name for d in host.tagged_domains(job_id)]
        for index, node in enumerate(self.nodes):
            cfg = self.config(index)
            paths = JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir)
            for path in (paths.job_dir, paths.ramdisk_dir, paths.user_dir, paths.lock):
                if os.path.lexists(path):
                    found.append(f"{node.name}:{path}")
            from vtorque.ibverbs import pool
            found += [f"{node.name}: function {a.pci}" for a in pool.assignments(cfg)
                      if a.job_id == job_id]
        shared = self.root / "shared"
        for ledger in ("addresses.json", "pkeys.json"):
            if (shared / ledger).exists() and job_id in json.loads((shared / ledger).read_text()):
                found.append(f"{ledger} entry of {job_id}")
        from vtorque.cluster import handoff
        if os.path.lexists(handoff.job_dir(self.config(0), job_id)):
            found.append(handoff.job_dir(self.config(0), job_id))
        return found

    def teardown_all(self) -> None:
        for job_id in list(read_db(self.db).get("jobs", {})):
            for index in range(len(self.nodes)):
                from vtorque.vm import lifecycle
                try:
                    lifecycle.down(job_id, self.config(index))
                except Exception as exc:  # keep cleaning
                    print(f"cleanup {job_id}: {exc}", file=sys.stderr)


@pytest.fixture
def torque_cluster(libvirtd, test_pool, job_user):
    made: list[Cluster] = []

    def make(n_nodes: int = 2, **overrides) -> Cluster:
        root = WORK_ROOT / f"torque-{uuid.uuid4().hex[:10]}"
        root.mkdir(mode=0o755, parents=True)
        cluster = Cluster(root, test_pool, n_nodes, **overrides)
        made.append(cluster)
        return cluster

    yield make
    import shutil
    for cluster in made:
        cluster.teardown_all()
        shutil.rmtree(cluster.root, ignore_errors=True)


