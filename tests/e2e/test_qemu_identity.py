"""Each job's QEMU runs under an identity of its own: the job owner's uid, primary gid and
supplementary groups (libvirt's per-domain static DAC label), and every file QEMU opens
for the job (seed, disks) belongs to that identity alone. Two jobs of two owners on one
node, real libvirtd, real QEMU (the direct-boot test guest): with the credentials of one
job's running QEMU process, as /proc reports them, the other job's seed and data disk
cannot be read, while its own can.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.e2e.accounts import JOB_UID, JOB_USER
from vtorque.journal import JobPaths

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

OTHER_USER, OTHER_UID = "vtjob2", 4243


@pytest.fixture(scope="module")
def other_user(job_user):
    """A second ordinary user; it stays, as the first one does (tests/e2e/accounts.py)."""
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--uid", str(OTHER_UID), "--user-group", "--shell",
                        "/bin/sh", OTHER_USER], check=True, timeout=60)
    return OTHER_USER


def qemu_credentials(domain: str) -> tuple[int, int, list[int]]:
    """(uid, gid, groups) of the domain's running QEMU process."""
    pid = Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip()
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["Uid"][1]), int(fields["Gid"][1]), [int(g) for g in fields["Groups"]]


def can_read(credentials: tuple[int, int, list[int]], path: str) -> bool:
    uid, gid, groups = credentials
    done = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={gid}",
                           f"--groups={','.join(map(str, groups))}", "--",
                           "head", "-c", "1", path], capture_output=True, timeout=30)
    return done.returncode == 0


def test_one_jobs_qemu_cannot_read_another_jobs_seed_or_disk(make_node, other_user):
    node = make_node()
    jobs = {"913001": JOB_USER, "913002": OTHER_USER}
    for job, user in jobs.items():
        up = node.vtorque("vm", "up", "--job", job, "--request", "img=testguest,disk=64M",
                          "--user", user, timeout=300)
        assert up.returncode == 0, up.stderr
    cfg = node.config
    files = {}
    for job in jobs:
        paths = JobPaths.for_job(job, cfg.state_dir, cfg.ramdisk_dir)
        name = f"vtorque-{paths.key}-0"
        files[job] = (name, os.path.join(paths.job_dir, f"{name}.seed.iso"),
                      os.path.join(paths.job_dir, f"{name}.data.raw"))
    mine, theirs = files["913001"], files["913002"]
    qemu = qemu_credentials(mine[0])
    assert qemu[:2] == (JOB_UID, JOB_UID)                 # the owner's uid and group
    assert qemu_credentials(theirs[0])[:2] == (OTHER_UID, pwd.getpwnam(OTHER_USER).pw_gid)
    # Its own job's files: yes (the test can fail); the other job's: no.
    assert can_read(qemu, mine[1]) and can_read(qemu, mine[2])
    assert not can_read(qemu, theirs[1])
    assert not can_read(qemu, theirs[2])
    other = qemu_credentials(theirs[0])
    assert not can_read(other, mine[1]) and not can_read(other, mine[2])
    for job in jobs:
        down = node.vtorque("vm", "down", "--job", job)
        assert down.returncode == 0, down.stderr
