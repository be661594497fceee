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
import re
import subprocess
import sys

from guestbench import compile_pingpong, guests

REQUEST = "img=testguest,vms_per_node=2,vcpus=1,ram=320M,vrdma=yes"
DEVICE = "rxe0"
BW_SIZE = 65536
LAT_SIZE = 8
MIB = 1048576 / 1e6                      # perftest's "MB/sec" is MiB/s
LAT_UNITS = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "sec": 1e6}
BW_UNITS = {"bytes": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "TB": 1e6}

# Runs as vtjob in guest rank 0. Each server is started on the peer in the background and
# bounded by timeout; `wait` collects it so the SSH session ends with nothing left behind.
# Under TCG a server can take longer than the 2 s head start to listen (ssh, then the
# binary over 9p): a client that finds no listener yet (rdma_cm REJECTED, printed by
# perftest as "Unexpected CM event ... 8"; qperf's "failed to connect") tries again, at
# most 20 times, 1 s apart. Any other failure is final.
GUEST_SCRIPT = """\
peer={peer}
n={iterations}
client() {{
    label=$1; shift; tries=0
    while :; do
        out=$("$@" 2>&1); status=$?; tries=$((tries + 1))
        case $status:$out in
            0:*) ;;
            *"Unexpected CM event"*|*"failed to connect"*)
                if [ $tries -lt 20 ]; then sleep 1; continue; fi ;;
        esac
        break
    done
    printf '%s\\n' "$out"
    echo "$label status=$status tries=$tries"
}}
echo "guest=$(hostname) peer=$peer transport=$VTORQUE_RDMA device=$VTORQUE_RDMA_DEVICE"
ssh -n "$peer" "timeout 120 ib_write_bw -d {device} -R -F -n $n -s {bw_size} >/dev/null 2>&1" &
sleep 2
client ib_write_bw timeout 120 ib_write_bw -d {device} -R -F -n $n -s {bw_size} "$peer"
wait
ssh -n "$peer" "timeout 120 ib_write_lat -d {device} -R -F -n $n -s {lat_size} >/dev/null 2>&1" &
sleep 2
client ib_write_lat timeout 120 ib_write_lat -d {device} -R -F -n $n -s {lat_size} "$peer"
wait
ssh -n "$peer" "timeout 120 qperf >/dev/null 2>&1" &
sleep 2
client "qperf tcp_lat" timeout 60 qperf -t 3 -m {lat_size} "$peer" tcp_lat
client "qperf tcp_bw" timeout 60 qperf -t 3 -m 64K "$peer" tcp_bw
timeout 20 qperf "$peer" quit >/dev/null 2>&1
wait
# MPI ping-pong: over verbs with the environment vtorque gives Soft-RoCE jobs, then over
# TCP (Open MPI's ob1 with the tcp BTL) between the same guests.
echo "=== mpi verbs"
timeout 300 mpirun -np 2 --host "$(hostname),$peer" {program} {mpi_iterations} 2>&1
echo "=== mpi tcp"
timeout 300 mpirun -np 2 --host "$(hostname),$peer" --mca pml ob1 --mca mtl ^ofi \\
    --mca btl tcp,vader,self {program} {mpi_iterations} 2>&1
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
    for path in ("verbs", "tcp"):
        mpi = re.search(rf"^=== mpi {path}\n(?:.*\n)*?pingpong .*latency_us=([\d.]+) "
                        r"bandwidth_MBps=([\d.]+)", output, re.M)
        found[f"mpi_{path}_lat"] = float(mpi[1]) if mpi else None
        found[f"mpi_{path}_bw"] = float(mpi[2]) if mpi else None
    return found


def iterations(text: str) -> int:
    value = int(text)
    if not 5 <= value <= 10000:
        raise argparse.ArgumentTypeError(f"{value} is not within 5..10000")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=iterations, default=200, metavar="N",
                        help="perftest iterations (5..10000, default 200)")
    parser.add_argument("--mpi-iterations", type=iterations, default=20, metavar="N",
                        help="MPI ping-pong iterations (5..10000, default 20)")
    args = parser.parse_args()
    with guests(REQUEST, name="rdma", pool=(240, 250),
                extra_config={"ibverbs": {"soft_roce": True}}) as pair:
        program = compile_pingpong(pair.work)
        script = GUEST_SCRIPT.format(peer=pair.hostnames[1], iterations=args.iterations,
                                     device=DEVICE, bw_size=BW_SIZE, lat_size=LAT_SIZE,
                                     program=program, mpi_iterations=args.mpi_iterations)
        try:
            guest_run = pair.ssh(script, timeout=900)
        except subprocess.TimeoutExpired as exc:
            partial = [part.decode(errors="replace") if isinstance(part, bytes) else part
                       for part in (exc.stdout, exc.stderr) if part]
            print("".join(partial).rstrip(), file=sys.stderr)
            raise SystemExit("bench: the guest measurement did not finish within 900 s "
                             "(partial output above)") from None
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
    v_lat, v_bw = found["mpi_verbs_lat"], found["mpi_verbs_bw"]
    t_lat, t_bw = found["mpi_tcp_lat"], found["mpi_tcp_bw"]
    print(f"MPI ping-pong over verbs (OFI MTL, verbs;ofi_rxm): latency {v_lat:9.1f} us   "
          f"bandwidth {v_bw:9.1f} MB/s")
    print(f"MPI ping-pong over TCP (ob1, tcp BTL):            latency {t_lat:9.1f} us   "
          f"bandwidth {t_bw:9.1f} MB/s")
    print(f"ratio MPI verbs/TCP latency:   {v_lat / t_lat:8.3f}x")
    print(f"ratio MPI verbs/TCP bandwidth: {v_bw / t_bw:8.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
