#!/usr/bin/env python3
"""Benchmark: MPI ping-pong between two guests against the same program between two host
processes, measured in one run, as ratios.

Two guests of one job (one node, vms_per_node=2, network 'vtorque' in the test namespace)
run tests/mpi/pingpong.c with mpirun from guest rank 0 over the job's SSH trust; the host
runs it with two local processes. Under TCG software emulation the guests are far slower:
the numbers say how much, honestly. The production target (KVM, SR-IOV) is bandwidth
within 5% of bare metal; docs/mpi.md says how a site measures that.
Needs root, scripts/setup, `scripts/netns-libvirtd start` and the user vtjob (the e2e
tests create it; `useradd -m -u 4242 -U vtjob` otherwise).
Usage: bench/mpi_pingpong.py [--iterations N]
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vtorque import config as config_mod  # noqa: E402
from vtorque.prologue.guests import bring_up, write_user_files  # noqa: E402
from vtorque.request import parse_request  # noqa: E402
from vtorque.vm import addresses, lifecycle  # noqa: E402

USER = "vtjob"
LINE = re.compile(r"latency_us=([\d.]+) bandwidth_MBps=([\d.]+)")


def parse(output: str) -> tuple[float, float]:
    match = LINE.search(output)
    if not match:
        raise SystemExit(f"bench: no ping-pong result in: {output.strip()[-300:]}")
    return float(match[1]), float(match[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50, choices=range(5, 1001))
    args = parser.parse_args()
    account = pwd.getpwnam(USER)
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-mpi-", dir="/var/tmp"))
    work.chmod(0o755)
    secret = work / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    program = work / "pingpong"
    subprocess.run(["mpicc", "-O2", "-o", str(program), str(REPO / "tests/mpi/pingpong.c")],
                   check=True)
    os.chown(work, account.pw_uid, account.pw_gid)
    config_path = work / "vtorque.yaml"
    config_path.write_text(yaml.safe_dump({
        "image_pool": os.environ.get("VTORQUE_TEST_POOL", "/var/lib/vtorque/test-images"),
        "state_dir": str(work / "state"), "log_file": str(work / "log"),
        "hypervisor": "qemu", "min_free_space": "64M", "secret_file": str(secret),
        "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": "testguest", "ram": "256M"},
        "network": {"mode": "network", "name": "vtorque", "pool_first": 200,
                    "pool_last": 250},
        "batch": {"shared_state_dir": str(work / "shared")}}))
    config = config_mod.load(str(config_path))
    job = f"bench-mpi-{os.getpid()}"
    host_run = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2",
                               str(program), str(args.iterations)],
                              capture_output=True, text=True, timeout=300)
    host_lat, host_bw = parse(host_run.stdout)
    try:
        _, guests = bring_up(job, parse_request("vms_per_node=2", config), config, user=USER)
        user_dir = write_user_files(job, config, USER, guests)
        command = (f"mpirun -np 2 --host {guests[0].hostname},{guests[1].hostname} "
                   f"{program} {args.iterations}")
        guest_run = subprocess.run(
            ["ip", "netns", "exec", "vtorque-dev", "setpriv", f"--reuid={account.pw_uid}",
             f"--regid={account.pw_gid}", "--init-groups", "--", "/usr/bin/ssh", "-F",
             f"{user_dir}/ssh_config", guests[0].hostname, command],
            capture_output=True, text=True, timeout=600)
        guest_lat, guest_bw = parse(guest_run.stdout + guest_run.stderr)
    finally:
        lifecycle.down(job, config)
        addresses.release(config, job)
        shutil.rmtree(work, ignore_errors=True)
    print(f"iterations: {args.iterations} (8-byte round trips; 1 MiB messages for bandwidth)")
    print(f"host processes:  latency {host_lat:9.1f} us   bandwidth {host_bw:9.1f} MB/s")
    print(f"two guests:      latency {guest_lat:9.1f} us   bandwidth {guest_bw:9.1f} MB/s")
    print(f"ratio guest/host latency:   {guest_lat / host_lat:8.1f}x")
    print(f"ratio guest/host bandwidth: {guest_bw / host_bw:8.4f}  (TCG emulation; production "
          "target with KVM + SR-IOV: >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
