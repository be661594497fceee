"""Snapshot starts on real QEMU: guests restored from the node's template answer as
their own job's guests and share no identity with each other; a template that cannot
be restored never fails a job (its guests boot, and it is rebuilt later); a changed
image gets a new template and the old one goes; turning snapshots off boots again.
Real libvirtd, QEMU (TCG), sshd in the guests; probes run as the job owner."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.accounts import JOB_USER
from tests.e2e.conftest import POOL
from tests.e2e.guest_ssh import in_guest
from vtorque.journal import Journal, JobPaths
from vtorque.mpi.sshkeys import scope_for
from vtorque.prologue.guests import bring_up, write_user_files
from vtorque.request import parse_request
from vtorque.vm import addresses, lifecycle
from vtorque.vm.template_store import TemplateStore

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

RESEEDED = b"crng reseeded due to virtual machine fork"
# What each guest says about itself: boot id, 32 fresh random bytes, its MAC, machine id,
# host name, and its SSH host key's fingerprint.
IDENTITY = ("cat /proc/sys/kernel/random/boot_id; "
            "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
            "cat /sys/class/net/eth0/address; cat /etc/machine-id; hostname; "
            "ssh-keygen -lf /etc/vtorque/ssh_host_ed25519_key.pub | cut -d' ' -f2")
FIELDS = ("boot_id", "random", "mac", "machine_id", "hostname", "host_key")


def private_pool(directory: Path) -> str:
    """A copy of the test image that a test may change or withdraw."""
    pool = directory / "pool"
    pool.mkdir(mode=0o755)
    for name in ("testguest.vmlinuz", "testguest.initrd", "testguest.yaml"):
        shutil.copy2(Path(POOL) / name, pool / name)
    assert "snapshot: true" in (pool / "testguest.yaml").read_text()
    return str(pool)


def starts(cfg, job: str) -> list[str]:
    paths = JobPaths.for_job(job, cfg.state_dir, cfg.ramdisk_dir)
    return [e.get("start") for e in Journal(paths.journal).entries()
            if e.get("event") == "guest-started"]


def vm_up(node, job: str, request: str = "vms_per_node=1") -> dict:
    done = node.vtorque("vm", "up", "--job", job, "--request", request, "--json",
                        timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def snap_node(make_node, job_user):
    node = make_node(snapshots={"enabled": True, "retry_after": 1},
                     network={"mode": "network", "name": "vtorque", "pool_first": 170,
                              "pool_last": 190})
    node.pool = private_pool(node.directory)
    data = yaml.safe_load(node.config_path.read_text())
    node.config_path.write_text(yaml.safe_dump({
        **data, "image_pool": node.pool, "log_file": str(node.directory / "vtorque.log"),
        "batch": {"shared_state_dir": str(node.directory / "shared")}}))
    yield node
    for job in list(node.jobs):
        addresses.release(node.config, job)


def test_restored_guests_answer_as_their_jobs_own_and_share_no_identity(snap_node):
    cfg = snap_node.config
    now = int(time.time())
    jobs = {"401": 2, "402": 1}
    facts, consoles = [], []
    for job, count in jobs.items():
        snap_node.jobs.add(job)
        keys = scope_for(job, JOB_USER, now)
        result, guests = bring_up(job, parse_request(f"vms_per_node={count}", cfg), cfg,
                                  user=JOB_USER, keys=keys)
        # The first job built the template, then restored its guests from it as well.
        assert [g.started for g in result.guests] == ["snapshot"] * count, \
            result.snapshot_note
        assert starts(cfg, job) == ["snapshot"] * count
        user_dir = write_user_files(job, cfg, JOB_USER, guests, keys)
        paths = JobPaths.for_job(job, cfg.state_dir, cfg.ramdisk_dir)
        for guest, started in zip(guests, result.guests, strict=True):
            # StrictHostKeyChecking against the job's pinned keys: the guest holds its
            # own job's host key, not the template's (which has none) or another's.
            done = in_guest(user_dir, guest.hostname, IDENTITY)
            assert done.returncode == 0, done.stderr
            facts.append(dict(zip(FIELDS, done.stdout.split(), strict=True)))
            assert facts[-1]["hostname"] == guest.hostname
            assert facts[-1]["mac"] == started.mac
            consoles.append(Path(paths.job_dir, f"{started.name}.console.log"))
    # Every guest has its own boot id, random stream, MAC, machine id and host key.
    for field in FIELDS:
        values = [f[field] for f in facts]
        assert len(set(values)) == len(values), (field, values)
    # The kernel of every restored guest saw a new VM generation ID and reseeded.
    deadline = time.monotonic() + 10
    while not all(RESEEDED in c.read_bytes() for c in consoles) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(RESEEDED in c.read_bytes() for c in consoles)
    # The template is root's alone; nothing of a job is in its directory.
    store = TemplateStore(cfg.state_dir)
    [(key, meta)] = store.entries()
    directory = Path(store.directory(key))
    assert sorted(p.name for p in directory.iterdir()) == ["domain.xml", "lock",
                                                           "meta.json", "state"]
    for path in [directory, *directory.iterdir()]:
        st = path.stat()
        assert st.st_uid == 0 and not stat.S_IMODE(st.st_mode) & 0o077, path
    assert meta["shape"]["image_name"] == "testguest"
    for job in jobs:
        lifecycle.down(job, cfg)
    # Turned off, the same image's guests boot; the template stays for later.
    data = yaml.safe_load(snap_node.config_path.read_text())
    data["snapshots"]["enabled"] = False
    snap_node.config_path.write_text(yaml.safe_dump(data))
    booted = vm_up(snap_node, "403")
    assert [g["started"] for g in booted["guests"]] == ["boot"]
    assert starts(snap_node.config, "403") == ["boot"]
    assert store.entries()[0][0] == key


def test_a_template_that_cannot_be_restored_never_fails_a_job(snap_node):
    first = vm_up(snap_node, "411")
    assert [g["started"] for g in first["guests"]] == ["snapshot"]
    cfg = snap_node.config
    store = TemplateStore(cfg.state_dir)
    [(key, meta)] = store.entries()
    # A stream QEMU refuses (its version word), same size: the store's checks pass and
    # QEMU's load fails.
    state = Path(store.directory(key), "state")
    with open(state, "r+b") as handle:
        handle.seek(meta["offset"] + 4)
        handle.write(b"\xff\xff\xff\xff")
    second = vm_up(snap_node, "412")
    assert [g["started"] for g in second["guests"]] == ["boot"]
    log = (snap_node.directory / "vtorque.log").read_text()
    assert "restoring from template" in log and "booting it instead" in log
    assert not state.exists()                        # dropped, never used again
    assert store.recent_failure(key, 600)
    # After snapshots.retry_after the template is built again, and used.
    time.sleep(1.2)
    third = vm_up(snap_node, "413")
    assert [g["started"] for g in third["guests"]] == ["snapshot"]
    assert state.exists() and store.recent_failure(key, 600) is None


def test_a_changed_image_gets_a_new_template_and_remove_takes_it(snap_node):
    vm_up(snap_node, "421")
    store = TemplateStore(snap_node.config.state_dir)
    [(old, _)] = store.entries()
    lifecycle.down("421", snap_node.config)
    # A rebuilt initrd (zero padding after the archive: the kernel ignores it), registered
    # with its new checksum: another image content, so another template.
    pool = Path(snap_node.pool)
    initrd = pool / "testguest.initrd"
    with open(initrd, "ab") as handle:
        handle.write(b"\0" * 4096)
    import hashlib
    digest = hashlib.sha256(initrd.read_bytes()).hexdigest()
    descriptor = pool / "testguest.yaml"
    text = descriptor.read_text()
    start = text.index("initrd: {file: testguest.initrd, sha256: ") + len(
        "initrd: {file: testguest.initrd, sha256: ")
    descriptor.write_text(text[:start] + digest + text[start + 64:])
    again = vm_up(snap_node, "422")
    assert [g["started"] for g in again["guests"]] == ["snapshot"]
    keys = [key for key, _ in store.entries()]
    assert len(keys) == 1 and keys[0] != old        # the stale one is gone
    lifecycle.down("422", snap_node.config)
    done = snap_node.vtorque("image", "remove", "testguest")
    assert done.returncode == 0, done.stderr
    assert "removed 1 snapshot template(s)" in done.stdout
    assert store.entries() == []
    assert not os.path.exists(initrd)
