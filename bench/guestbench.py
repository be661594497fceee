"""Shared set-up of the guest benchmarks: one job's guests on this node, a private config
and work directory, commands run as the job owner in guest rank 0 over the job's SSH trust,
and a teardown that leaves nothing.

Needs root, scripts/setup, `scripts/netns-libvirtd start` and the user vtjob (the e2e
tests create it; `useradd -m -u 4242 -U vtjob` otherwise).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vtorque import config as config_mod  # noqa: E402
from vtorque.mpi.sshkeys import scope_for  # noqa: E402
from vtorque.prologue.guests import bring_up, write_user_files  # noqa: E402
from vtorque.request import parse_request  # noqa: E402
from vtorque.vm import addresses, lifecycle  # noqa: E402

USER = "vtjob"
NETNS = "vtorque-dev"


@dataclass
class Guests:
    work: Path                 # owned by the job user, seen by the guests at the same path
    hostnames: list[str]
    user_dir: str
    uid: int
    gid: int

    def ssh(self, command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run `command` as the job owner in guest rank 0."""
        return subprocess.run(
            ["ip", "netns", "exec", NETNS, "setpriv", f"--reuid={self.uid}",
             f"--regid={self.gid}", "--init-groups", "--", "/usr/bin/ssh", "-F",
             f"{self.user_dir}/ssh_config", self.hostnames[0], command],
            capture_output=True, text=True, timeout=timeout)


def compile_pingpong(work: Path) -> Path:
    """tests/mpi/pingpong.c built with mpicc into `work`."""
    program = work / "pingpong"
    subprocess.run(["mpicc", "-O2", "-o", str(program), str(REPO / "tests/mpi/pingpong.c")],
                   check=True, timeout=120)
    return program


@contextlib.contextmanager
def guests(request: str, *, name: str, pool: tuple[int, int],
           extra_config: dict | None = None) -> Iterator[Guests]:
    """The guests of `request` (a -vm text) for one benchmark job; everything is removed
    on exit. `pool` is the range of host numbers the job's addresses come from (kept
    apart from the demo's and the tests')."""
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (guests, the test namespace, setpriv)")
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        raise SystemExit(f"bench: no user {USER}; `useradd -m -u 4242 -U {USER}`") from None
    work = Path(tempfile.mkdtemp(prefix=f"vtorque-bench-{name}-", dir="/var/tmp"))
    work.chmod(0o755)
    secret = work / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    config_path = work / "vtorque.yaml"
    config_path.write_text(yaml.safe_dump({
        "image_pool": os.environ.get("VTORQUE_TEST_POOL", "/var/lib/vtorque/test-images"),
        "state_dir": str(work / "state"), "log_file": str(work / "log"),
        "hypervisor": "qemu", "min_free_space": "64M", "secret_file": str(secret),
        "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": "testguest", "ram": "256M"},
        "network": {"mode": "network", "name": "vtorque", "pool_first": pool[0],
                    "pool_last": pool[1]},
        "batch": {"shared_state_dir": str(work / "shared")},
        **(extra_config or {})}))
    config = config_mod.load(str(config_path))
    job = f"bench-{name}-{secrets.token_hex(4)}"
    try:
        keys = scope_for(job, USER, int(time.time()))
        _, entries = bring_up(job, parse_request(request, config), config, user=USER,
                              keys=keys)
        user_dir = write_user_files(job, config, USER, entries, keys)
        os.chown(work, account.pw_uid, account.pw_gid)
        yield Guests(work, [g.hostname for g in entries], user_dir, account.pw_uid,
                     account.pw_gid)
    finally:
        # Each step even when an earlier one failed; the work directory (which holds the
        # config and state) only once the guests are surely gone, so a failed teardown can
        # be finished by hand: lifecycle.down(job, config of WORK/vtorque.yaml).
        try:
            lifecycle.down(job, config)
            shutil.rmtree(work, ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - report, keep the evidence
            print(f"bench: teardown of {job} failed ({exc}); its state is kept in {work}",
                  file=sys.stderr)
        finally:
            addresses.release(config, job)
