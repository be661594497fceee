"""Two jobs on one node share the guest network but not each other's guests: a guest
reaches its own job's guests (by name, from /etc/hosts) and the host side, and cannot
open a connection to another job's guest (libvirt nwfilter per NIC). Real guests, real
sshd, probes run inside the guests as the job owner."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.e2e.accounts import JOB_USER
from tests.e2e.guest_ssh import in_guest
from vtorque.mpi.sshkeys import scope_for
from vtorque.prologue.guests import bring_up, write_user_files
from vtorque.request import parse_request
from vtorque.vm import addresses, lifecycle

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests


@pytest.fixture
def net_node(make_node, job_user):
    node = make_node(network={"mode": "network", "name": "vtorque", "pool_first": 120,
                              "pool_last": 160},
                     batch={"shared_state_dir": "/var/tmp/vtorque-tests/shared-net"})
    yield node
    for job in ("301", "302"):
        addresses.release(node.config, job)
    shutil.rmtree(node.config.batch.shared_state_dir, ignore_errors=True)


def can_connect(address: str) -> str:
    # bash's /dev/tcp: a TCP connect to sshd, bounded by timeout(1).
    return (f"timeout 4 bash -c 'exec 3<>/dev/tcp/{address}/22' 2>/dev/null "
            f"&& echo open-{address} || echo closed-{address}")


def test_jobs_on_one_network_are_isolated(net_node):
    cfg = net_node.config
    net_node.jobs.update({"301", "302"})
    now = int(time.time())
    keys_a, keys_b = scope_for("301", JOB_USER, now), scope_for("302", JOB_USER, now)
    _, job_a = bring_up("301", parse_request("vms_per_node=2", cfg), cfg, user=JOB_USER,
                        keys=keys_a)
    _, job_b = bring_up("302", parse_request("vms_per_node=1", cfg), cfg, user=JOB_USER,
                        keys=keys_b)
    user_dir = write_user_files("301", cfg, JOB_USER, job_a, keys_a)
    a0, a1, b0 = job_a[0], job_a[1], job_b[0]
    probe = " ; ".join([f"getent hosts {a1.hostname}", can_connect(a1.address),
                        can_connect(b0.address)])
    done = in_guest(user_dir, a0.hostname, probe)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert a1.address in out                        # /etc/hosts knows the job's guests
    assert f"open-{a1.address}" in out              # own job: reachable
    assert f"closed-{b0.address}" in out            # the other job: not
    lifecycle.down("301", cfg)
    lifecycle.down("302", cfg)
