"""Real Torque and OpenPBS servers under vtorque's hooks, for the end-to-end tests
(test_torque_real.py, test_openpbs_real.py) and the demo.

One cluster per scheduler runs on this machine (scripts/torque-cluster: loopback, one home
and mom_priv per node; scripts/openpbs-cluster: inside the vtorque-dev namespace). Each
node gets its own vtorque config and state directory, as on a real cluster; all share the
shared state directory, the image pool, the secret and the one libvirtd. The hooks are
installed the way an admin installs them (contrib/torque_hooks/install,
contrib/pbs_hooks/install.sh). Jobs are submitted with vsub by the ordinary user vtjob.

On a real cluster the job shell lives at the same path on every node, each with that
node's config; here the nodes share one host, so the job shell qsub names is a small
dispatcher that runs the shell of the node the job landed on (Torque: PBS_MOMPORT).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import REPO
from vtorque import config as config_mod

JOB_USER = "vtjob"
PYTHON = str(REPO / ".venv" / "bin" / "python")
FINISHED_TORQUE = {"C"}
FINISHED_PBS = {"F"}


def node_config(root: Path, node: str, pool: str, secret: Path, bin_dir: str, system: str,
                job_shell: Path, **overrides) -> dict:
    cfg = {
        "image_pool": pool, "state_dir": str(root / node / "state"),
        "ramdisk_dir": str(root / node / "ramdisk"), "log_file": str(root / node / "log"),
        "node_name": node, "hypervisor": "qemu", "min_free_space": "64M",
        "secret_file": str(secret),
        "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": "testguest", "ram": "256M"},
        "timeouts": {"provision": 150, "guest_ready": 120, "teardown": 30},
        "network": {"mode": "network", "name": "vtorque", "subnet": "192.168.122.0/24",
                    "gateway": "192.168.122.1", "pool_first": 100, "pool_last": 199},
        "batch": {"system": system, "bin_dir": bin_dir, "shared_state_dir": str(root / "shared"),
                  "job_shell": str(job_shell), "max_requeues": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


class RealCluster:
    """What both real servers have in common for the tests."""

    scheduler = ""
    script: Path           # scripts/torque-cluster or scripts/openpbs-cluster

    def __init__(self, root: Path, pool: str, nodes: list[str], bin_dir: str, env: dict):
        self.root = root
        self.pool = pool
        self.nodes = nodes
        self.bin_dir = bin_dir
        self.env = env
        self.workdir = root / "work"
        self.secret = root / "secret"
        self.job_shell = root / "job-shell"

    # -- the site ----------------------------------------------------------------------------
    def write_configs(self, **overrides) -> None:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        if not self.secret.exists():
            self.secret.write_bytes(os.urandom(32))
            self.secret.chmod(0o600)
        self.workdir.mkdir(exist_ok=True)
        uid = pwd.getpwnam(JOB_USER).pw_uid
        os.chown(self.workdir, uid, uid)
        for node in self.nodes:
            (self.root / node).mkdir(mode=0o755, exist_ok=True)
            cfg = node_config(self.root, node, self.pool, self.secret, self.bin_dir,
                              self.scheduler, self.job_shell_of(node), **overrides)
            path = self.config_path(node)
            path.write_text(yaml.safe_dump(cfg))
            os.chmod(path, 0o644)

    def job_shell_of(self, node: str) -> Path:
        """The job shell a node's config names (batch.job_shell)."""
        return self.job_shell

    @classmethod
    def start_daemons(cls) -> dict[str, str]:
        """The cluster script's `start` (building first on a fresh machine): the
        environment it prints, NAME=VALUE per line."""
        first = subprocess.run([str(cls.script), "start"], capture_output=True, text=True,
                               timeout=3600)
        assert first.returncode == 0, first.stderr
        return dict(line.split("=", 1) for line in first.stdout.splitlines() if "=" in line)

    def install_hooks(self) -> None:
        """vtorque's hooks and job shells on every node, through the cluster script (which
        runs the real installers): one config path naming the node, which each node's
        hook fills in with its own name."""
        hooks = subprocess.run([str(self.script), "start", "--vtorque-config",
                                str(self.root / "{node}" / "vtorque.yaml"),
                                "--vtorque-python", PYTHON,
                                "--job-shell", str(self.root / "{node}" / "job-shell")],
                               capture_output=True, text=True, timeout=600)
        assert hooks.returncode == 0, hooks.stderr

    def config_path(self, node: str) -> Path:
        return self.root / node / "vtorque.yaml"

    def config(self, node: str | None = None):
        return config_mod.load(str(self.config_path(node or self.nodes[0])))

    # -- jobs --------------------------------------------------------------------------------
    def user_env(self, config: str | None = None) -> dict:
        return {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "HOME": f"/home/{JOB_USER}",
                "VTORQUE_CONFIG": config or str(self.config_path(self.nodes[0])),
                "LANG": "C.UTF-8",
                **{k: v for k, v in self.env.items() if k.startswith("PBS_")}}

    def vsub(self, *args: str, script: str, name: str = "job.sh",
             config: str | None = None) -> subprocess.CompletedProcess:
        """vsub as the job's owner, from its working directory, with the real qsub (and
        the login node's config: the first node's unless `config`)."""
        path = self.workdir / name
        path.write_text(script)
        uid = pwd.getpwnam(JOB_USER).pw_uid
        os.chown(path, uid, uid)
        return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups",
                               "--", PYTHON, "-m", "vtorque.submit.vsub", *args, str(path)],
                              capture_output=True, text=True, env=self.user_env(config),
                              cwd=self.workdir, timeout=120)

    def qsub_plain(self, script: str) -> str:
        """The real qsub (not vsub) as the job's owner: a job without VM requests."""
        path = self.workdir / "plain.sh"
        path.write_text(script)
        uid = pwd.getpwnam(JOB_USER).pw_uid
        os.chown(path, uid, uid)
        done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--init-groups",
                               "--", os.path.join(self.bin_dir, "qsub"), str(path)],
                              capture_output=True, text=True, env=self.user_env(),
                              cwd=self.workdir, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def submit(self, *args: str, script: str, name: str = "job.sh") -> str:
        done = self.vsub(*args, script=script, name=name)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def wait(self, what: str, predicate, timeout: float = 300, poll: float = 1.0):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(poll)

    def wait_finished(self, job_id: str, timeout: float = 600) -> dict:
        return self.wait(f"job {job_id} to finish",
                         lambda: (lambda j: j if j and self.finished(j) else None)(
                             self.job(job_id)), timeout)

    def leftovers(self, job_id: str) -> list[str]:
        """Everything of the job still on any node: domains, files, marks, functions,
        ledger entries, its hand-off."""
        from tests.e2e import leftovers
        found = leftovers.on_nodes(job_id, {node: self.config(node) for node in self.nodes})
        shared = self.root / "shared"
        for ledger in ("addresses.json", "pkeys.json"):
            if (shared / ledger).exists() and job_id in json.loads((shared / ledger).read_text()):
                found.append(f"{ledger} entry of {job_id}")
        from vtorque.cluster import handoff
        if os.path.lexists(handoff.job_dir(self.config(), job_id)):
            found.append(handoff.job_dir(self.config(), job_id))
        return found

    def node_log(self, node: str) -> str:
        path = Path(self.config(node).log_file)
        return path.read_text() if path.exists() else ""

    def logged(self, job_id: str, *fragments: str) -> bool:
        """Whether one node's vtorque log has a line of the job with all `fragments`."""
        return any(f'"job": "{job_id}"' in line and all(f in line for f in fragments)
                   for node in self.nodes for line in self.node_log(node).splitlines())

    # -- what differs ------------------------------------------------------------------------
    def job(self, job_id: str) -> dict | None:
        raise NotImplementedError

    def finished(self, job: dict) -> bool:
        raise NotImplementedError

    def offline(self) -> dict[str, str]:
        """Nodes out of service: name -> note."""
        raise NotImplementedError

    def clear(self, node: str) -> None:
        raise NotImplementedError

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        raise NotImplementedError


class TorqueCluster(RealCluster):
    scheduler = "torque"
    script = REPO / "scripts" / "torque-cluster"

    @classmethod
    def start(cls, root: Path, pool: str, **overrides) -> TorqueCluster:
        """The cluster (reused when it runs), then every node's config and hooks."""
        env = cls.start_daemons()
        home = Path(env["TORQUE_HOME"])
        nodes = json.loads((home / "torque-cluster.json").read_text())["nodes"]
        bin_dir = env["PATH"].split(":", 1)[0]
        cluster = cls(root, pool, nodes, bin_dir, env)
        cluster.home = home
        cluster.write_configs(**overrides)
        cluster.install_hooks()
        cluster.write_dispatcher()
        return cluster

    def write_dispatcher(self) -> None:
        """The job shell qsub names: each node's own, chosen by the mom's port."""
        ports = {node: self.mom_rm_port(node) for node in self.nodes}
        cases = "".join(f"    {ports[n]}) exec {self.root / n / 'job-shell'} \"$@\" ;;\n"
                        for n in self.nodes)
        self.job_shell.write_text(
            "#!/bin/sh\n# The job shell of the node this job runs on (one host, several "
            "moms).\ncase \"$PBS_MOMPORT\" in\n" + cases +
            "    *) echo \"job-shell: no node with mom port $PBS_MOMPORT\" >&2; exit 1 ;;\n"
            "esac\n")
        os.chmod(self.job_shell, 0o755)

    def mom_rm_port(self, node: str) -> int:
        index = self.nodes.index(node)
        return 15103 + 10 * index

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.bin_dir}:/usr/sbin:/usr/bin:/bin", "LANG": "C"}
        done = subprocess.run([os.path.join(self.bin_dir, argv[0]), *argv[1:]],
                              capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def job(self, job_id: str) -> dict | None:
        done = self.run("qstat", "-f", "-x", job_id, check=False)
        if done.returncode != 0:
            return None
        root = ET.fromstring(done.stdout)
        job = root.find("Job")
        attrs = {}
        for child in job:
            if len(child):
                attrs[child.tag] = {sub.tag: (sub.text or "") for sub in child}
            else:
                attrs[child.tag] = (child.text or "")
        return attrs

    def finished(self, job: dict) -> bool:
        return job.get("job_state") in FINISHED_TORQUE

    def offline(self) -> dict[str, str]:
        root = ET.fromstring(self.run("pbsnodes", "-x").stdout)
        out = {}
        for node in root.findall("Node"):
            state = node.findtext("state") or ""
            if "offline" in state or "down" in state:
                out[node.findtext("name")] = node.findtext("note") or ""
        return out

    def clear(self, node: str) -> None:
        """Back in service, as an admin does: the mom's own error message too (a failed
        prologue or epilogue marks the node down until `momctl -q clearmsg`)."""
        momctl = os.path.join(os.path.dirname(self.bin_dir), "sbin", "momctl")
        subprocess.run([momctl, "-h", "localhost", "-p", str(self.mom_rm_port(node)), "-q",
                        "clearmsg"], capture_output=True, timeout=60)
        self.run("pbsnodes", "-c", node)
        self.run("pbsnodes", "-N", "", node, check=False)

    def tracejob(self, job_id: str) -> str:
        return self.run("tracejob", "-n", "2", job_id, check=False).stdout


class OpenPBSCluster(RealCluster):
    scheduler = "openpbs"
    script = REPO / "scripts" / "openpbs-cluster"

    @classmethod
    def start(cls, root: Path, pool: str, **overrides) -> OpenPBSCluster:
        env = cls.start_daemons()
        nodes = ["n1", "n2"]
        cluster = cls(root, pool, nodes, os.path.join(env["PBS_EXEC"], "bin"), env)
        cluster.write_configs(**overrides)
        cluster.install_hooks()
        # A MoM that starts with jobs of an earlier session in its spool runs their end
        # hooks at once, with the hook an earlier session installed, before this one's
        # configs exist: the hook then takes its vnode offline ("config ...: file not
        # found", seen once in CI). Nothing of that concerns this session's tests.
        for node in cluster.offline():
            cluster.clear(node)
        return cluster

    def job_shell_of(self, node: str) -> Path:
        # The launch hook of the job's primary MoM names its own node's job shell.
        return self.root / node / "job-shell"

    def run(self, *argv: str, check: bool = True, admin: bool = True
            ) -> subprocess.CompletedProcess:
        """A PBS command as root; admin (the default): on the server's host (inside the
        namespace), where root is a PBS manager: elsewhere the real server treats root as
        any other user (qdel and qrls of another user's job: "Unauthorized Request")."""
        env = {"PATH": f"{self.bin_dir}:/usr/sbin:/usr/bin:/bin", "LANG": "C",
               "PBS_CONF_FILE": self.env["PBS_CONF_FILE"]}
        command = [os.path.join(self.bin_dir, argv[0]), *argv[1:]]
        if admin:
            command = ["ip", "netns", "exec", self.env["PBS_NETNS"], *command]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def job(self, job_id: str) -> dict | None:
        done = self.run("qstat", "-fx", "-F", "json", job_id, check=False)
        if done.returncode != 0:
            return None
        jobs = json.loads(done.stdout).get("Jobs", {})
        return next(iter(jobs.values()), None)

    def finished(self, job: dict) -> bool:
        return job.get("job_state") in FINISHED_PBS

    def offline(self) -> dict[str, str]:
        nodes = json.loads(self.run("pbsnodes", "-av", "-F", "json").stdout)["nodes"]
        return {name: info.get("comment", "") for name, info in nodes.items()
                if "offline" in info.get("state", "") or "down" in info.get("state", "")}

    def clear(self, node: str) -> None:
        """Back in service, as an admin does. A vnode a MoM hook took offline stays
        offline after `pbsnodes -r` on the real server; qmgr sets its state."""
        self.run("qmgr", "-c", f"set node {node} state = free")
        self.run("qmgr", "-c", f"unset node {node} comment", check=False)

    def mom_log(self, node: str) -> str:
        """The MoM's own log (what pbs.logjobmsg writes for the job, tracejob's source)."""
        logs = Path(self.env["PBS_CONF_FILE"]).parent / "moms" / node / "mom_logs"
        return "".join(path.read_text(errors="replace") for path in sorted(logs.glob("*")))


def module_cluster(kind: type[RealCluster], name: str, **overrides):
    """A module's fixture: the real cluster (started if it was not running, and then
    stopped again at the module's end), its nodes configured under WORK_ROOT/name with
    `overrides`, the MPI programs in its working directory."""
    from tests.e2e.conftest import WORK_ROOT
    from tests.e2e.mpi_programs import compile_programs

    @pytest.fixture(scope="module")
    def fixture(libvirtd, test_pool, job_user):
        running = subprocess.run([str(kind.script), "status"], capture_output=True)
        root = WORK_ROOT / name
        remove(root)
        try:
            cluster = kind.start(root, test_pool, **overrides)
            compile_programs(cluster.workdir)
            yield cluster
        finally:
            if running.returncode != 0:
                subprocess.run([str(kind.script), "stop"], capture_output=True,
                               timeout=300)
            remove(root)
    return fixture


def job_list(cluster_fixture: str):
    """A test's fixture: the list the test appends its job ids to; at its end each job is
    deleted and torn down on every node (cleanup), whatever the test did."""
    @pytest.fixture
    def jobs(request):
        cluster = request.getfixturevalue(cluster_fixture)
        made: list[str] = []
        yield made
        cleanup(cluster, made)
    return jobs


def withdrawn_image(pool: str) -> str:
    """A descriptor of testguest under another name (the same files), to withdraw after
    submission; returns its path."""
    text = Path(pool, "testguest.yaml").read_text().replace("name: testguest",
                                                             "name: vanishing")
    descriptor = Path(pool, "vanishing.yaml")
    descriptor.write_text(text)
    return str(descriptor)


def cleanup(cluster: RealCluster, jobs: list[str]) -> None:
    """After a test: the jobs gone from the server, every node's part torn down."""
    for job_id in jobs:
        cluster.run("qdel", job_id, check=False)
    from vtorque.epilogue.teardown import clean_node
    for job_id in jobs:
        for node in cluster.nodes:
            try:
                clean_node(job_id, cluster.config(node), domains=True)
            except Exception as exc:  # keep cleaning the others
                print(f"cleanup of {job_id} on {node}: {exc}", file=sys.stderr)
    for node in cluster.offline():
        cluster.clear(node)


def remove(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
