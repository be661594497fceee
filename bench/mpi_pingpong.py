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
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from guestbench import compile_pingpong, guests

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
    with tempfile.TemporaryDirectory(prefix="vtorque-bench-host-") as tmp:
        host_run = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np",
                                   "2", str(compile_pingpong(Path(tmp))),
                                   str(args.iterations)],
                                  capture_output=True, text=True, timeout=300)
    host_lat, host_bw = parse(host_run.stdout)
    with guests("vms_per_node=2", name="mpi", pool=(200, 239)) as pair:
        program = compile_pingpong(pair.work)
        guest_run = pair.ssh(f"mpirun -np 2 --host {pair.hostnames[0]},{pair.hostnames[1]} "
                             f"{program} {args.iterations}")
    guest_lat, guest_bw = parse(guest_run.stdout + guest_run.stderr)
    print(f"iterations: {args.iterations} (8-byte round trips; 1 MiB messages for bandwidth)")
    print(f"host processes:  latency {host_lat:9.1f} us   bandwidth {host_bw:9.1f} MB/s")
    print(f"two guests:      latency {guest_lat:9.1f} us   bandwidth {guest_bw:9.1f} MB/s")
    print(f"ratio guest/host latency:   {guest_lat / host_lat:8.1f}x")
    print(f"ratio guest/host bandwidth: {guest_bw / host_bw:8.4f}  (TCG emulation; production "
          "target with KVM + SR-IOV: >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
