#!/usr/bin/env python3
"""Benchmark: RDMA write bandwidth and latency between two guests (perftest over the verbs
API) against TCP over the same virtio link (qperf), measured in one run, as ratios.

Two guests of one job (one node, vms_per_node=2, `-vm vrdma=yes`, network 'vtorque' in the
test namespace). This machine has no InfiniBand/RoCE adapter, so the node falls back to
Soft-RoCE (config ibverbs.soft_roce): each guest gets rxe0 on its virtio eth0. From guest
rank 0, over the job's SSH trust, with rank 1 as the peer: ib_write_bw (64 KiB writes) and
ib_write_lat (8-byte writes) over rdma_cm, then qperf tcp_bw (64 KiB) and tcp_lat (8 bytes).
Soft-RoCE runs the RDMA protocol in the guest kernel on top of the same NIC, and the guests
run under TCG software emulation: the numbers say what the verbs path costs here, not what
SR-IOV on real hardware gives. Bandwidth is in MB/s = 10^6 bytes/s (perftest reports
MiB/s, converted; qperf reports SI units), latency in microseconds.
Needs root, scripts/setup, `scripts/netns-libvirtd start` and the user vtjob (the e2e
tests create it; `useradd -m -u 4242 -U vtjob` otherwise).
Usage: bench/rdma.py [--iterations N]
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import secrets
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
REQUEST = "img=testguest,vms_per_node=2,vcpus=1,ram=320M,vrdma=yes"
DEVICE = "rxe0"
BW_SIZE = 65536
LAT_SIZE = 8
MIB = 1048576 / 1e6                      # perftest's "MB/sec" is MiB/s
LAT_UNITS = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "sec": 1e6}
BW_UNITS = {"bytes": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}

# Runs as vtjob in guest rank 0. Each server is started on the peer in the background and
# bounded by timeout; `wait` collects it so the SSH session ends with nothing left behind.
GUEST_SCRIPT = """\
peer={peer}
n={iterations}
echo "guest=$(hostname) peer=$peer transport=$VTORQUE_RDMA device=$VTORQUE_RDMA_DEVICE"
ssh -n "$peer" "timeout 120 ib_write_bw -d {device} -R -F -n $n -s {bw_size} >/dev/null 2>&1" &
sleep 2
timeout 120 ib_write_bw -d {device} -R -F -n $n -s {bw_size} "$peer" 2>&1
echo "ib_write_bw status=$?"
wait
ssh -n "$peer" "timeout 120 ib_write_lat -d {device} -R -F -n $n -s {lat_size} >/dev/null 2>&1" &
sleep 2
timeout 120 ib_write_lat -d {device} -R -F -n $n -s {lat_size} "$peer" 2>&1
echo "ib_write_lat status=$?"
wait
ssh -n "$peer" "timeout 120 qperf >/dev/null 2>&1" &
sleep 2
timeout 60 qperf -t 3 -m {lat_size} "$peer" tcp_lat 2>&1
echo "qperf tcp_lat status=$?"
timeout 60 qperf -t 3 -m 64K "$peer" tcp_bw 2>&1
echo "qperf tcp_bw status=$?"
timeout 20 qperf "$peer" quit >/dev/null 2>&1
wait
"""


def parse(output: str, iterations: int) -> dict[str, float | None]:
    """The four numbers from the guest's output (None for any that is missing)."""
    found: dict[str, float | None] = {}
    bw = re.search(rf"^\s*{BW_SIZE}\s+{iterations}\s+([\d.]+)\s+([\d.]+)", output, re.M)
    found["rdma_bw"] = float(bw[2]) * MIB if bw else None
    lat = re.search(rf"^\s*{LAT_SIZE}\s+{iterations}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)",
                    output, re.M)
    found["rdma_lat"] = float(lat[3]) if lat else None
    tcp_lat = re.search(r"^\s*latency\s*=\s*([\d.]+)\s*(ns|us|ms|sec)\b", output, re.M)
    found["tcp_lat"] = float(tcp_lat[1]) * LAT_UNITS[tcp_lat[2]] if tcp_lat else None
    tcp_bw = re.search(r"^\s*bw\s*=\s*([\d.]+)\s*(bytes|KB|MB|GB|TB)/sec", output, re.M)
    found["tcp_bw"] = float(tcp_bw[1]) * BW_UNITS[tcp_bw[2]] if tcp_bw else None
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200, choices=range(5, 10001),
                        metavar="N", help="perftest iterations (5..10000, default 200)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (guests, the test namespace, setpriv)")
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        raise SystemExit(f"bench: no user {USER}; `useradd -m -u 4242 -U {USER}`") from None
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-rdma-", dir="/var/tmp"))
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
        "network": {"mode": "network", "name": "vtorque", "pool_first": 240,
                    "pool_last": 250},
        "ibverbs": {"soft_roce": True},
        "batch": {"shared_state_dir": str(work / "shared")}}))
    config = config_mod.load(str(config_path))
    job = f"bench-rdma-{secrets.token_hex(4)}"
    try:
        _, guests = bring_up(job, parse_request(REQUEST, config), config, user=USER)
        user_dir = write_user_files(job, config, USER, guests)
        script = GUEST_SCRIPT.format(peer=guests[1].hostname, iterations=args.iterations,
                                     device=DEVICE, bw_size=BW_SIZE, lat_size=LAT_SIZE)
        command = ["ip", "netns", "exec", "vtorque-dev", "setpriv",
                   f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups",
                   "--", "/usr/bin/ssh", "-F", f"{user_dir}/ssh_config", guests[0].hostname,
                   script]
        try:
            guest_run = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            partial = [part.decode(errors="replace") if isinstance(part, bytes) else part
                       for part in (exc.stdout, exc.stderr) if part]
            print("".join(partial).rstrip(), file=sys.stderr)
            raise SystemExit("bench: the guest measurement did not finish within 600 s "
                             "(partial output above)") from None
    finally:
        lifecycle.down(job, config)
        addresses.release(config, job)
        shutil.rmtree(work, ignore_errors=True)
    output = guest_run.stdout + guest_run.stderr
    found = parse(output, args.iterations)
    missing = [name for name, value in found.items() if not value]
    if missing:
        print(output.rstrip(), file=sys.stderr)
        raise SystemExit(f"bench: no result for {', '.join(missing)} (ssh status "
                         f"{guest_run.returncode}; guest output above)")
    rdma_bw, rdma_lat = found["rdma_bw"], found["rdma_lat"]
    tcp_bw, tcp_lat = found["tcp_bw"], found["tcp_lat"]
    transport = re.search(r"transport=(\S*)", output)
    print(f"two guests, Soft-RoCE ({DEVICE} on virtio eth0, transport="
          f"{transport[1] if transport else '?'}), TCG emulation")
    print(f"perftest: {args.iterations} iterations, {BW_SIZE}-byte writes for bandwidth, "
          f"{LAT_SIZE}-byte writes for latency (typical); qperf: 3 s per test, 64K / 8 bytes")
    print(f"RDMA write (perftest):  latency {rdma_lat:9.1f} us   bandwidth {rdma_bw:9.1f} MB/s")
    print(f"TCP (qperf):            latency {tcp_lat:9.1f} us   bandwidth {tcp_bw:9.1f} MB/s")
    print(f"ratio RDMA/TCP latency:   {rdma_lat / tcp_lat:8.3f}x  (below 1: RDMA faster)")
    print(f"ratio RDMA/TCP bandwidth: {rdma_bw / tcp_bw:8.3f}x  (above 1: RDMA faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
