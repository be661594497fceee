"""Acceptance test of the node-local life cycle: real libvirtd, real QEMU (TCG) guests.

`vtorque vm up` boots the test guest, the guests answer on their serial consoles,
`vtorque vm down` leaves nothing (no domain, no file, no QEMU process, no lock), and a
second `vm down` succeeds. Faults: guests that never answer, a prologue killed mid-way,
two jobs with prefix-sharing ids on one node, libvirtd unreachable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.e2e.conftest import VTORQUE
from vtorque.journal import JobPaths
from vtorque.vm import lifecycle
from vtorque.vm.host import Host

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

REQUEST = "img=testguest,vcpus=1,ram=256M,vms_per_node=2"


def job_paths(node, job: str) -> JobPaths:
    cfg = node.config
    return JobPaths.for_job(job, cfg.state_dir, cfg.ramdisk_dir)


def qemu_pids_of(names: list[str]) -> list[int]:
    """QEMU processes whose command line names one of these domains (test check only)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(f"guest={name}," in arg or arg == f"guest={name}" for arg in cmd
               for name in names):
            found.append(proc.info["pid"])
    return found


def assert_nothing_left(node, job: str, names: list[str]) -> None:
    paths = job_paths(node, job)
    with Host(node.config.libvirt_uri) as host:
        assert host.tagged_domains(job) == []
        for name in names:
            assert host.state(name) is None
    assert not os.path.lexists(paths.job_dir)
    assert not os.path.lexists(paths.ramdisk_dir)
    assert not os.path.lexists(paths.lock)
    assert qemu_pids_of(names) == []


def test_up_answer_down_leaves_nothing(make_node):
    node = make_node()
    up = node.vtorque("vm", "up", "--job", "101.srv", "--request", REQUEST, "--json")
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    guests = result["guests"]
    assert [g["rank"] for g in guests] == [0, 1]
    names = [g["name"] for g in guests]

    # Both guests run, answered with their own token, and have a QEMU process.
    listing = node.vtorque("vm", "list", "--job", "101.srv", "--json")
    assert listing.returncode == 0, listing.stderr
    assert sorted((g["name"], g["state"]) for g in json.loads(listing.stdout)) == \
        sorted((n, "running") for n in names)
    paths = job_paths(node, "101.srv")
    for name in names:
        console = open(os.path.join(paths.job_dir, f"{name}.console.log"), "rb").read()
        assert b"vtorque-ready " in console
    assert len(qemu_pids_of(names)) == 2
    assert oct(os.stat(paths.job_dir).st_mode & 0o777) == "0o710"

    down = node.vtorque("vm", "down", "--job", "101.srv")
    assert down.returncode == 0, down.stderr
    assert "2 guest(s) destroyed" in down.stdout
    assert_nothing_left(node, "101.srv", names)

    again = node.vtorque("vm", "down", "--job", "101.srv")
    assert again.returncode == 0, again.stderr
    assert "0 guest(s) destroyed" in again.stdout
    assert_nothing_left(node, "101.srv", names)


def test_guest_that_never_answers_is_rolled_back(make_node):
    # A 0.5 s readiness timeout: the guest cannot have booted, so provisioning fails.
    node = make_node(timeouts={"guest_ready": 0.5})
    up = node.vtorque("vm", "up", "--job", "102", "--request", "vms_per_node=1")
    assert up.returncode == 1
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1 and "did not answer within 0.5 s" in lines[0]
    assert "Traceback" not in up.stderr
    name = f"vtorque-{job_paths(node, '102').key}-0"
    assert_nothing_left(node, "102", [name])


def test_killed_prologue_is_cleaned_by_down(make_node):
    node = make_node()
    paths = job_paths(node, "103")
    child = subprocess.Popen([*VTORQUE, "--config", str(node.config_path), "vm", "up",
                              "--job", "103", "--request", "vms_per_node=2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node.jobs.add("103")
    deadline = time.monotonic() + 60
    with Host(node.config.libvirt_uri) as host:
        while not host.tagged_domains("103") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert host.tagged_domains("103"), "vm up never started a guest"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    names = [f"vtorque-{paths.key}-{rank}" for rank in (0, 1)]
    down = node.vtorque("vm", "down", "--job", "103")
    assert down.returncode == 0, down.stderr
    assert_nothing_left(node, "103", names)


def test_jobs_sharing_a_prefix_are_kept_apart(make_node):
    node = make_node()
    for job in ("12", "123"):
        up = node.vtorque("vm", "up", "--job", job, "--request", "vms_per_node=1")
        assert up.returncode == 0, up.stderr
    down = node.vtorque("vm", "down", "--job", "12")
    assert down.returncode == 0, down.stderr
    with Host(node.config.libvirt_uri) as host:
        assert host.tagged_domains("12") == []
        survivors = host.tagged_domains("123")
    assert [d.state for d in survivors] == ["running"]
    assert os.path.isdir(job_paths(node, "123").job_dir)
    assert lifecycle.down("123", node.config) == [survivors[0].name]
    assert_nothing_left(node, "123", [survivors[0].name])


def test_libvirtd_unreachable_fails_cleanly(make_node, tmp_path):
    node = make_node(libvirt_uri=f"qemu:///system?socket={tmp_path}/no-such.sock")
    up = node.vtorque("vm", "up", "--job", "104", "--request", "vms_per_node=1")
    assert up.returncode == 1
    assert "cannot connect to libvirt" in up.stderr
    assert len(up.stderr.strip().splitlines()) == 1
    assert not os.path.lexists(job_paths(node, "104").job_dir)


@pytest.mark.parametrize("request_text, key", [
    ("vcpus=0", "vcpus"),
    ("img=../../etc/passwd", "img"),
    ("vms_per_node=8,vcpus=64", "vcpus"),  # more cores than any test machine has
    ("ram=1T", "ram"),
])
def test_bad_requests_create_nothing(make_node, request_text, key):
    node = make_node()
    up = node.vtorque("vm", "up", "--job", "105", "--request", request_text)
    assert up.returncode == 1
    assert key in up.stderr and "Traceback" not in up.stderr
    assert not os.path.lexists(os.path.join(node.config.state_dir, job_paths(node, "105").key))
