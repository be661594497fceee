"""Fixtures for tests that boot real guests through a real libvirtd under QEMU TCG.

libvirtd runs inside a network namespace this test session creates (scripts/netns-libvirtd),
so guest networks exist only there. scripts/test runs these tests in one serial pytest
process after the unit tests (xdist's loadgroup did not keep them on one worker with this
pytest), so exactly one process owns libvirtd and the guests. Whatever a test starts is
torn down by the fixture, pass or fail, and the session stops the libvirtd it started (by
pid file) at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from vtorque import config as config_mod
from vtorque.vm import lifecycle

REPO = Path(__file__).resolve().parents[2]
NETNS = "vtorque-dev"
POOL = os.environ.get("VTORQUE_TEST_POOL", "/var/lib/vtorque/test-images")
# Under /var/tmp, not pytest's tmp_path: QEMU runs as libvirt-qemu and must traverse the
# path to the job directories, which pytest's 0700 /tmp/pytest-of-root forbids.
WORK_ROOT = Path("/var/tmp/vtorque-tests")
VTORQUE = [sys.executable, "-m", "vtorque"]


@pytest.fixture(scope="session")
def libvirtd():
    """A libvirtd in the test network namespace; stopped at the end if we started it."""
    if os.geteuid() != 0:
        pytest.skip("guest tests need root (libvirtd, network namespaces)")
    script = str(REPO / "scripts" / "netns-libvirtd")
    status = subprocess.run([script, "status", NETNS], capture_output=True, text=True)
    started_here = status.returncode != 0
    started = subprocess.run([script, "start", NETNS], capture_output=True, text=True,
                             timeout=180)
    if started.returncode != 0:
        pytest.fail(f"scripts/netns-libvirtd start failed: {started.stderr.strip()}")
    yield "qemu:///system"
    if started_here:
        subprocess.run([script, "stop", NETNS], check=False, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def test_pool():
    """The test guest image pool, built from this machine's kernel if missing."""
    subprocess.run([str(REPO / "scripts" / "build-test-image"), "--pool", POOL], check=True,
                   capture_output=True, text=True, timeout=600)
    return POOL


def write_config(directory: Path, pool: str, **overrides) -> Path:
    """A config for guest tests: TCG, no host reserve (2-core machines), private state."""
    timeouts = overrides.pop("timeouts", {})
    network = overrides.pop("network", {"mode": "none"})
    secret = directory / "secret"
    if not secret.exists():
        secret.write_bytes(os.urandom(32))
        secret.chmod(0o600)
    text = {
        "secret_file": str(secret),
        "image_pool": pool,
        "state_dir": str(directory / "state"),
        "ramdisk_dir": str(directory / "ramdisk"),
        "hypervisor": "qemu",
        "libvirt_uri": overrides.pop("libvirt_uri", "qemu:///system"),
        "min_free_space": "64M",
        "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": "testguest", "ram": "256M"},
        "timeouts": {"provision": 120, "guest_ready": 90, "teardown": 30, **timeouts},
        "network": network,
        # Guests boot here (the cold path); tests/e2e/test_snapshot.py and the real batch
        # systems' clusters start them from templates.
        "snapshots": {"enabled": False},
        **overrides,
    }
    import yaml
    path = directory / "vtorque.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


class Node:
    """One simulated node: its own config and state directory, sharing libvirtd."""

    def __init__(self, directory: Path, config_path: Path):
        self.directory = directory
        self.config_path = config_path
        self.jobs: set[str] = set()

    @property
    def config(self):
        return config_mod.load(str(self.config_path))

    def vtorque(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Run the vtorque CLI as a user would."""
        if "--job" in args:
            self.jobs.add(args[args.index("--job") + 1])
        return subprocess.run([*VTORQUE, "--config", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def make_node(libvirtd, test_pool):
    """Factory for simulated nodes; every job they touched is torn down afterwards."""
    WORK_ROOT.mkdir(mode=0o755, exist_ok=True)
    os.chmod(WORK_ROOT, 0o755)
    nodes: list[Node] = []

    def make(**overrides) -> Node:
        directory = WORK_ROOT / uuid.uuid4().hex[:12]
        directory.mkdir(mode=0o755)
        node = Node(directory, write_config(directory, test_pool, **overrides))
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        try:
            cfg = config_mod.load(str(node.config_path))
        except Exception:  # a test may have broken its config on purpose
            cfg = None
        if cfg is not None and cfg.libvirt_uri == "qemu:///system":
            for job in node.jobs:
                try:
                    lifecycle.down(job, cfg)
                except Exception as exc:  # report, but keep cleaning the others
                    print(f"cleanup of job {job} failed: {exc}", file=sys.stderr)
        shutil.rmtree(node.directory, ignore_errors=True)


from tests.e2e.accounts import job_user  # noqa: E402, F401  (a fixture)
