"""A real Slurm cluster whose nodes are separate vtorque nodes: N slurmd of
scripts/slurm-cluster on this machine, each node with its own vtorque config, state and
log (as N machines would have), one shared state directory and one secret. slurm.conf has
one Prolog and one Epilog for all nodes, so a small dispatcher runs the node's own shim
(contrib/slurm/install) by SLURMD_NODENAME; the job shell is dispatched the same way.
Used by the cloud-image and OSv end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.e2e.accounts import JOB_UID, JOB_USER
from tests.e2e.conftest import POOL, REPO
from vtorque import config as config_mod
from vtorque.vm.host import Host

SLURM = str(REPO / "scripts" / "slurm-cluster")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}

DISPATCH = """#!/bin/sh
# Simulated machines on one host: each node runs its own vtorque {what}.
case "$SLURMD_NODENAME" in {names}) ;; *) echo "no node $SLURMD_NODENAME" >&2; exit 1 ;; esac
exec {root}/"$SLURMD_NODENAME"/{what} "$@"
"""


class SlurmNodes:
    """Slurm nodes on this machine, each with its own vtorque config and state."""

    def __init__(self, root: Path, nodes: tuple[str, ...]):
        self.root = root
        self.nodes = nodes
        self.env = {"PATH": "/usr/bin:/bin:/usr/sbin",
                    "SLURM_CONF": str(root / "slurm" / "slurm.conf")}
        self.workdir = root / "work"
        self.shared = root / "shared"

    def config_path(self, node: str) -> Path:
        return self.root / node / "vtorque.yaml"

    def config(self, node: str):
        return config_mod.load(str(self.config_path(node)))

    def slurm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{argv}: {done.returncode} {done.stdout}{done.stderr}")
        return done

    def vsub(self, script: str, *args: str) -> subprocess.CompletedProcess:
        """vsub as the job owner, from the working directory, to the real sbatch."""
        env = {**self.env, "HOME": f"/home/{JOB_USER}",
               "VTORQUE_CONFIG": str(self.config_path(self.nodes[0])),
               "PYTHONPATH": str(REPO)}
        path = self.workdir / "job.sh"
        path.write_text(script)
        os.chown(path, JOB_UID, JOB_UID)
        return subprocess.run(["setpriv", f"--reuid={JOB_UID}", f"--regid={JOB_UID}",
                               "--init-groups", "--", sys.executable, "-m",
                               "vtorque.submit.vsub", *args, str(path)],
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

    def logs(self) -> str:
        parts = []
        for node in self.nodes:
            log = self.root / node / "vtorque.log"
            if log.exists():
                parts.append(f"--- {node}\n" + log.read_text()[-1500:])
        return "\n".join(parts)

    def wait(self, what: str, pred, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(1.0)
        raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.logs()}")

    def finished(self, job_id: str, timeout: float) -> dict[str, str]:
        return self.wait(f"job {job_id} finished",
                         lambda: (j := self.job(job_id))["JobState"] in FINISHED and j,
                         timeout)

    def leftovers(self, job_id: str) -> list[str]:
        """Everything of the job on any node: domains, files, addresses, hand-off."""
        from tests.e2e import leftovers
        found = leftovers.on_nodes(job_id, {node: self.config(node) for node in self.nodes})
        ledger = self.shared / "addresses.json"
        if ledger.exists() and job_id in json.loads(ledger.read_text() or "{}"):
            found.append("address block")
        found += [str(p) for p in self.shared.glob("*") if not p.name.startswith(".")
                  and p.name != "addresses.json"]
        return found


def node_config(cluster: SlurmNodes, node: str, secret: Path, *, img: str, ram: str,
                pool_first: int, pool_last: int) -> dict:
    directory = cluster.root / node
    return {
        "image_pool": POOL, "state_dir": str(directory / "state"),
        "ramdisk_dir": str(directory / "ramdisk"), "log_file": str(directory / "vtorque.log"),
        "node_name": node, "hypervisor": "qemu", "min_free_space": "256M",
        "secret_file": str(secret),
        "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": img, "ram": ram},
        # Below Slurm's PrologEpilogTimeout (300 s in scripts/slurm-cluster).
        "timeouts": {"provision": 280, "guest_ready": 270, "teardown": 60},
        "network": {"mode": "network", "name": "vtorque", "pool_first": pool_first,
                    "pool_last": pool_last},
        "batch": {"system": "slurm", "bin_dir": "/usr/bin",
                  "job_shell": str(cluster.root / "job-shell"),
                  "shared_state_dir": str(cluster.shared), "max_requeues": 0},
    }


def node_names(count: int) -> tuple[str, ...]:
    """scripts/slurm-cluster's names: n1..nN, or this host's short name for one node."""
    if count == 1:
        return (socket.gethostname().split(".")[0],)
    return tuple(f"n{i}" for i in range(1, count + 1))


@contextlib.contextmanager
def slurm_nodes(prefix: str, count: int, **config):
    """The cluster of `count` nodes, running; stopped, every guest of it torn down and its
    files removed at the end."""
    nodes = node_names(count)
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    root.chmod(0o755)
    cluster = SlurmNodes(root, nodes)
    cluster.workdir.mkdir()
    os.chown(cluster.workdir, JOB_UID, JOB_UID)
    secret = root / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    for node in nodes:
        (root / node).mkdir(mode=0o755)
        cluster.config_path(node).write_text(yaml.safe_dump(
            node_config(cluster, node, secret, **config)))
        subprocess.run([str(REPO / "contrib" / "slurm" / "install"), "--dir",
                        str(root / node / "hooks"), "--python", sys.executable, "--config",
                        str(cluster.config_path(node)), "--job-shell",
                        str(root / node / "job-shell")],
                       check=True, capture_output=True, text=True, timeout=60)
    for what in ("hooks/prolog", "hooks/epilog", "job-shell"):
        path = root / what.split("/")[-1]
        path.write_text(DISPATCH.format(what=what, root=root, names="|".join(nodes)))
        path.chmod(0o755)
    first = random.randrange(10000, 90000) * 10     # ids unique to this cluster
    subprocess.run([SLURM, "start", "--dir", str(root / "slurm"), "--nodes", str(len(nodes)),
                    "--prolog", str(root / "prolog"), "--epilog", str(root / "epilog"),
                    "--first-job-id", str(first)],
                   check=True, capture_output=True, text=True, timeout=180)
    try:
        yield cluster
    finally:
        subprocess.run([SLURM, "stop", "--dir", str(root / "slurm"), "--purge"],
                       capture_output=True, timeout=180)
        from vtorque.vm import lifecycle
        with Host("qemu:///system") as host:
            ours = {d.job_id for d in host.tagged_domains() if d.job_id.isdigit()
                    and first <= int(d.job_id) < first + 10000}
        for node in nodes:
            for job in ours:
                try:
                    lifecycle.down(job, cluster.config(node))
                except Exception as exc:     # keep cleaning the others
                    print(f"cleanup of {job} on {node}: {exc}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


def submitted_id(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Submitted batch job "), done.stdout
    return done.stdout.split()[-1]
