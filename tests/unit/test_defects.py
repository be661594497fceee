"""Defects found by reading the code, each pinned by a test that failed before its fix:
the reaper and the job-wide pieces, teardown's last look, OSv without a network, `vm
down`'s leftovers, the job shell's last sleep, address blocks held by refused requests, a
guest whose files are gone, a full state file system.

The libvirt side runs against libvirt's test driver (as test_lifecycle.py); nothing boots.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_lifecycle import Env, needs_qemu_ids
from tests.unit.test_lifecycle import env as env  # noqa: F401  (the fixture)
from vtorque import config as config_mod
from vtorque.admin import cli, reaper
from vtorque.batch.base import BatchSystem, JobContext
from vtorque.cluster import handoff
from vtorque.errors import UnknownJobError
from vtorque.vm import addresses, lifecycle

pytestmark = needs_qemu_ids


class GoneBatch(BatchSystem):
    """A batch server that has forgotten every job."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__("/nonexistent")

    def job(self, job_id: str) -> JobContext:
        raise UnknownJobError("fake", job_id)

    def offline_node(self, node: str, reason: str) -> None:
        raise AssertionError("the reaper never takes nodes offline")


def networked(env: Env, tmp_path: Path, **extra: Any):
    """The env's config with guest networking (an address block per job)."""
    data = yaml.safe_load(env.config_path.read_text())
    data["network"] = {"mode": "network", "subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}
    data["node_name"] = "n1"
    data.update(extra)
    env.config_path.write_text(yaml.safe_dump(data))
    return config_mod.load(str(env.config_path))


# --- the reaper and the job-wide pieces ------------------------------------------------------

def test_the_reaper_frees_a_block_no_node_holds(env: Env, tmp_path: Path) -> None:
    """A job that left no local state anywhere but still held its address block kept it
    forever: the reaper never read the ledgers."""
    config = networked(env, tmp_path)
    addresses.allocate(config, "66.h", 2)
    verdicts = {v.job_id: v for v in reaper.reap(config, GoneBatch())}
    assert verdicts["66.h"].action == "reaped"
    assert addresses.allocated_jobs(config) == []


def test_a_reaper_keeps_the_block_while_another_node_may_hold_guests(env: Env,
                                                                    tmp_path: Path) -> None:
    """Every node's reaper released the job-wide pieces as if it were the mother
    superior: the first one freed a block whose guests still ran on another node, and a
    new job could share their addresses."""
    config = networked(env, tmp_path)
    addresses.allocate(config, "67.h", 2)
    handoff.publish(config, "67.h", handoff.NodeStatus("n2", handoff.READY))
    handoff.publish(config, "67.h", handoff.NodeStatus("n1", handoff.READY))
    reaper.reap(config, GoneBatch())
    assert addresses.allocated_jobs(config) == ["67.h"]          # n2 may hold guests
    assert handoff.nodes_left(config, "67.h") == ["n2"]          # n1 withdrew its part
    n2 = config.with_node_name("n2")
    reaper.reap(n2, GoneBatch())
    assert addresses.allocated_jobs(config) == []                # the last one out
    assert not os.path.exists(handoff.job_dir(config, "67.h"))


def test_the_reaper_destroys_a_guest_whose_files_are_gone(env: Env, monkeypatch) -> None:
    """It found the job by its libvirt tag, called it reaped, and left the guest running:
    teardown ran only when the job's files existed."""
    from vtorque.files import remove_tree
    from vtorque.vm import host as host_mod
    monkeypatch.setattr(host_mod, "Host", lambda uri, *a, **k: env.host)
    lifecycle.up("68", env.request("img=testguest"), env.config)
    remove_tree(env.paths("68").job_dir)
    verdicts = {v.job_id: v for v in reaper.reap(env.config, GoneBatch())}
    assert verdicts["68"].action == "reaped"
    env.assert_nothing_left("68")


# --- teardown's last look --------------------------------------------------------------------

def test_teardown_looks_again_after_slow_destroys_used_up_its_time(env: Env,
                                                                   monkeypatch) -> None:
    """With the teardown timeout spent by the destroy calls themselves, teardown reported
    "still exists after destroy" without looking again, and the node went offline."""
    lifecycle.up("69", env.request("img=testguest,vms_per_node=2"), env.config)
    real_destroy = env.host.destroy
    clock = {"offset": 0.0}
    real_monotonic = time.monotonic

    def slow_destroy(name: str) -> None:
        real_destroy(name)
        clock["offset"] += 2 * env.config.timeouts.teardown     # this one took long
    monkeypatch.setattr(env.host, "destroy", slow_destroy)
    monkeypatch.setattr(lifecycle.time, "monotonic", lambda: real_monotonic() + clock["offset"])
    assert len(lifecycle.down("69", env.config)) == 2
    env.assert_nothing_left("69")


# --- OSv without a network ------------------------------------------------------------------

def _add_osv_image(pool: Path) -> None:
    import hashlib
    import subprocess
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(pool / "osv.qcow2"), "16M"],
                   check=True, timeout=60)
    data = (pool / "osv.qcow2").read_bytes()
    (pool / "osv.yaml").write_text(
        "name: osv\nkind: osv\ndistro: osv\narch: x86_64\n"
        f"disk: {{file: osv.qcow2, format: qcow2, sha256: '{hashlib.sha256(data).hexdigest()}'}}\n")


def test_an_osv_job_without_a_network_is_refused_before_anything_starts(
        env: Env, pool_dir: Path, capsys) -> None:
    """OSv is reached only through its REST API: with network.mode none it waited for a
    console line OSv never prints and ended as a node fault."""
    from vtorque.errors import ImageError
    from vtorque.request import check_image_matches, parse_request
    _add_osv_image(pool_dir)
    request = parse_request("img=osv", env.config)
    from vtorque.images import Catalog
    image = Catalog(env.config.image_pool).describe("osv")
    with pytest.raises(ImageError, match="network.mode"):
        check_image_matches(request, image, env.config)
    assert cli.main(["--config", str(env.config_path), "vm", "up", "--job", "70",
                     "--request", "img=osv"]) == 1
    assert "network.mode" in capsys.readouterr().err
    env.assert_nothing_left("70")


# --- `vm down` --------------------------------------------------------------------------------

def test_vm_down_frees_the_partition_key_and_the_hand_off_too(env: Env, tmp_path: Path,
                                                              capsys) -> None:
    """It freed the address block but left the partition key and the hand-off
    directory."""
    from vtorque.ibverbs import pool
    config = networked(env, tmp_path, ibverbs={"pkey_first": 0x10, "pkey_last": 0x20})
    addresses.allocate(config, "71", 1)
    pool.allocate_pkey(config, "71", 1)
    handoff.publish(config, "71", handoff.NodeStatus("n1", handoff.READY))
    assert cli.main(["--config", str(env.config_path), "vm", "down", "--job", "71"]) == 0
    assert addresses.allocated_jobs(config) == []
    assert pool.pkey_jobs(config) == set()
    assert not os.path.exists(handoff.job_dir(config, "71"))


def test_vm_down_of_a_job_with_nothing_here_creates_nothing(env: Env, capsys) -> None:
    assert not env.state.exists()
    assert cli.main(["--config", str(env.config_path), "vm", "down", "--job", "72"]) == 0
    assert not env.state.exists()                 # not even the lock directory


# --- address blocks held by refused requests -------------------------------------------------

@pytest.mark.parametrize("request_text", ["img=nosuch", "img=testguest,vcpus=64",
                                          "img=testguest,distro=rocky"])
def test_a_refused_vm_up_holds_no_addresses(env: Env, tmp_path: Path, request_text: str,
                                            capsys) -> None:
    """The block was allocated before the image, size and space checks and never given
    back: refused requests exhausted the pool, and then hid the real refusal."""
    config = networked(env, tmp_path)
    for attempt in range(300):         # more attempts than the pool has addresses
        assert cli.main(["--config", str(env.config_path), "vm", "up", "--job",
                         f"{100 + attempt}", "--request", request_text]) == 1
        assert addresses.allocated_jobs(config) == []
    err = capsys.readouterr().err
    assert "no 1 free guest addresses" not in err


def test_a_failed_vm_up_gives_its_block_back(env: Env, tmp_path: Path, monkeypatch) -> None:
    from vtorque.errors import HypervisorError
    config = networked(env, tmp_path)

    def refuse(xml: str, attempts: int = 3) -> str:
        raise HypervisorError("libvirt refused to start the guest: test")
    monkeypatch.setattr(env.host, "start_transient", refuse)
    assert cli.main(["--config", str(env.config_path), "vm", "up", "--job", "73",
                     "--request", "img=testguest"]) == 1
    assert addresses.allocated_jobs(config) == []
    env.assert_nothing_left("73")


# --- a full state file system ----------------------------------------------------------------

@pytest.mark.parametrize("where", ["", ".locks", "73-"])
def test_a_full_state_file_system_is_one_line(env: Env, monkeypatch, capsys,
                                              where: str) -> None:
    """The lock directory, the lock file, the job directory, the journal: a traceback."""
    real_mkdir, real_open = os.mkdir, os.open
    state = str(env.state)

    def full(path) -> bool:
        path = str(path)
        return path.startswith(state) and where in path[len(state):]

    def mkdir(path, *args, **kwargs):
        if full(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if full(path) and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)
    assert cli.main(["--config", str(env.config_path), "vm", "up", "--job", "73",
                     "--request", "img=testguest"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert env.host.tagged_domains("73") == []


# --- the job shell --------------------------------------------------------------------------

def test_the_job_shell_does_not_sleep_after_its_last_probe(tmp_path: Path,
                                                            monkeypatch) -> None:
    """It slept once more after the last failed SSH probe (about 12 s lost)."""
    from vtorque import proc
    from vtorque.jobshell import ssh
    slept: list[float] = []
    monkeypatch.setattr(ssh.time, "sleep", slept.append)
    monkeypatch.setattr(ssh.proc, "run", lambda *a, **k: proc.Completed(
        list(a[0]), 255, "", "ssh: connect to host vt1-0: Connection refused\n"))
    status = ssh.run("#!/bin/sh\ntrue\n", {"PBS_JOBID": "1.h"}, "1.h", str(tmp_path), "vt1-0")
    assert status == 255
    assert len(slept) == ssh.PROBE_ATTEMPTS - 1
