#!/usr/bin/env python3
"""Benchmark: mother-superior assembly, from the last node's report to "all N nodes ready".

N simulated nodes (default 16, 256, 4096) go through the real hand-off code over a local
directory laid out as the shared state directory (batch.shared_state_dir): each node
`jobwide.join`s (its `starting` status, the job's address block), publishes `ready`
(`handoff.publish`), and the mother superior waits in `handoff.collect` as the prologue
does (its default poll interval); at the end every node `jobwide.leave`s. The mother
superior's collect runs in its own process, as on a real node. Measured per N, medians
of the rounds, the sizes interleaved within each round:
  - ms-last: the mother superior is the last to report (it publishes its own `ready`
    and then collects, as prologue/provision.py does): one pass over N status files;
  - waiting, last one: the mother superior already waits with N-1 nodes ready; the last
    node reports at a random point of its poll sleep (median and max of the rounds);
  - waiting, burst: every other node reports during one poll sleep (the worst case: a
    full sleep, then a pass that reads all N files).
The interval runs from the moment the last report is on the file system (its publish
returned) to collect's return, on one monotonic clock shared by both processes.
join and leave of all N nodes are reported too (informational: no budget).
Goal (issue 15): the worst case for 4096 nodes <= 1 s, growth no worse than linear (the
growth exponent k of t ~ N**k, from consecutive sizes, at most 1.10: noise allowance).
Only files under a temporary directory (or --dir); no guests, no batch system, no root.
Usage: bench/assembly.py [--rounds N] [--sizes 16,256,4096] [--dir DIR]
"""

from __future__ import annotations

import argparse
import inspect
import math
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vtorque import config as config_mod  # noqa: E402
from vtorque.cluster import handoff, jobwide  # noqa: E402
from vtorque.vm import addresses  # noqa: E402

GOAL_SECONDS = 1.0
LINEAR = 1.10                 # growth exponents up to this count as linear (noise on a
                              # shared machine moves per-node costs by about 10 %)
COLLECT_TIMEOUT = 120.0       # collect's own bound (the provisioning timeout's role)
WAIT_BOUND = 180.0            # how long the bench waits for the collector at most
POLL = inspect.signature(handoff.collect).parameters["poll"].default


def parse_sizes(text: str) -> list[int]:
    """'16,256,4096' -> [16, 256, 4096]: at least two sizes, ascending, 2..65536."""
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if len(sizes) < 2 or sizes != sorted(set(sizes)) or not 2 <= sizes[0] <= sizes[-1] <= 65536:
        raise ValueError(f"sizes must be at least two ascending numbers in 2..65536: {text!r}")
    return sizes


def growth(sizes: list[int], seconds: list[float]) -> list[tuple[int, int, float, float]]:
    """For consecutive sizes: (n1, n2, time ratio, exponent), the exponent k of
    t2/t1 = (n2/n1)**k: 1 is linear, 2 quadratic, below 1 fixed costs still count."""
    rows = []
    for i in range(len(sizes) - 1):
        n1, n2, t1, t2 = sizes[i], sizes[i + 1], seconds[i], seconds[i + 1]
        ratio = t2 / t1 if t1 > 0 else math.inf
        exponent = math.log(ratio) / math.log(n2 / n1) if 0 < ratio < math.inf else math.inf
        rows.append((n1, n2, ratio, exponent))
    return rows


def node_names(n: int) -> list[str]:
    return [f"node{i:05d}.bench" for i in range(n)]


def ready(node: str, rank: int) -> handoff.NodeStatus:
    """A node's `ready` status as provision.py publishes it (one guest per node)."""
    guests = [{"rank": rank, "name": f"vt-bench-{rank}", "hostname": f"vm{rank}",
               "mac": f"52:54:00:{rank >> 16 & 255:02x}:{rank >> 8 & 255:02x}:{rank & 255:02x}"}]
    return handoff.NodeStatus(node, handoff.READY, guests=guests, run=0)


def _collector(conn, config_path: str, job_id: str, nodes: list[str], block: bool) -> None:
    """The mother superior's wait, in its own process. Tells the parent when the first
    pass is over (the second call of collect's clock); with `block`, waits there for the
    parent's go, so that every report lands within the one following poll sleep."""
    config = config_mod.load(config_path)
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        if calls == 2:
            conn.send("waiting")
            if block and not conn.poll(WAIT_BOUND):
                raise SystemExit("collector: no go from the bench")
            if block:
                conn.recv()
        return time.monotonic()

    statuses = handoff.collect(config, job_id, nodes, COLLECT_TIMEOUT, clock=clock, run=0)
    done = time.monotonic()
    conn.send((done, sum(s.state == handoff.READY for s in statuses.values())))


def _wait_collector(conn, proc, n: int) -> float:
    if not conn.poll(WAIT_BOUND):
        proc.kill()
        raise SystemExit("bench: the collector did not finish")
    done, n_ready = conn.recv()
    proc.join(10)
    if n_ready != n:
        raise SystemExit(f"bench: collect saw {n_ready} of {n} nodes ready")
    return done


def _start_collector(ctx, config_path: str, job_id: str, nodes: list[str], block: bool):
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_collector, args=(child, config_path, job_id, nodes, block))
    proc.start()
    if not parent.poll(WAIT_BOUND) or parent.recv() != "waiting":
        proc.kill()
        raise SystemExit("bench: the collector did not start waiting")
    return parent, proc


def one_job(ctx, config, config_path: str, job_id: str, n: int, rng: random.Random
            ) -> dict[str, float]:
    nodes = node_names(n)
    ms, others = nodes[0], nodes[1:]
    out: dict[str, float] = {}

    start = time.perf_counter()
    for node in nodes:
        jobwide.join(config, job_id, node, 0, n)
    out["join"] = time.perf_counter() - start

    # Burst: the mother superior is ready and waits; every other node reports within
    # one of its poll sleeps.
    handoff.publish(config, job_id, ready(ms, 0))
    conn, proc = _start_collector(ctx, config_path, job_id, nodes, block=True)
    start = time.perf_counter()
    for rank, node in enumerate(others, 1):
        handoff.publish(config, job_id, ready(node, rank))
    out["publish"] = time.perf_counter() - start
    reported = time.monotonic()
    conn.send("go")
    out["burst"] = _wait_collector(conn, proc, n) - reported

    # Waiting, last one: N-1 ready and collected; the last node reports at a random
    # point of the mother superior's poll sleep.
    handoff.publish(config, job_id, handoff.NodeStatus(nodes[-1], handoff.STARTING, run=0))
    conn, proc = _start_collector(ctx, config_path, job_id, nodes, block=False)
    time.sleep(rng.uniform(0, POLL))
    handoff.publish(config, job_id, ready(nodes[-1], n - 1))
    reported = time.monotonic()
    out["last"] = _wait_collector(conn, proc, n) - reported

    # The mother superior is the last to report: publish, then collect (one pass).
    handoff.publish(config, job_id, ready(ms, 0))
    reported = time.monotonic()
    statuses = handoff.collect(config, job_id, nodes, COLLECT_TIMEOUT, run=0)
    out["ms_last"] = time.monotonic() - reported
    if sum(s.state == handoff.READY for s in statuses.values()) != n:
        raise SystemExit("bench: collect did not see every node ready")

    start = time.perf_counter()
    released = [jobwide.leave(config, job_id, node) for node in nodes]
    out["leave"] = time.perf_counter() - start
    if released.count(True) != 1 or not released[-1] or \
            os.path.lexists(handoff.job_dir(config, job_id)) or \
            job_id in addresses.allocated_jobs(config):
        raise SystemExit("bench: leave did not release the job's pieces exactly once")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 21))
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("16,256,4096"))
    parser.add_argument("--dir", help="where to lay out the shared state directory "
                        "(default: a new temporary directory, removed afterwards)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-assembly-", dir=args.dir))
    try:
        return run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> int:
    sizes: list[int] = args.sizes
    load_before = _load()
    (work / "pool").mkdir()
    config_path = work / "vtorque.yaml"
    hosts = max(sizes) + 16
    config_path.write_text(yaml.safe_dump({
        "image_pool": str(work / "pool"), "state_dir": str(work / "state"),
        "log_file": str(work / "log"), "node_name": "node00000.bench",
        "batch": {"system": "torque", "shared_state_dir": str(work / "shared")},
        # Guest networking on, so that join allocates the job's address block as a
        # networked job's prologue does (one guest per node).
        "network": {"mode": "bridge", "subnet": "10.64.0.0/10", "gateway": "10.64.0.1",
                    "pool_first": 16, "pool_last": hosts}}))
    config = config_mod.load(str(config_path))
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(15)
    results: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    deadline = time.monotonic() + 3600
    for r in range(args.rounds):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]     # rotate: interleaved
        for i, n in enumerate(order):
            if time.monotonic() > deadline:
                raise SystemExit("bench: over an hour; stopping")
            results[n].append(one_job(ctx, config, str(config_path), f"{100 + r * 10 + i}.bench",
                                      n, rng))
    med = {n: {k: statistics.median(x[k] for x in results[n]) for k in results[n][0]}
           for n in sizes}
    worst_last = {n: max(x["last"] for x in results[n]) for n in sizes}
    fs = os.statvfs(work)
    print(f"rounds: {args.rounds} (medians; sizes interleaved), collect's poll: {POLL:g} s, "
          f"state directory on {_fs_type(work)} ({fs.f_bsize} B blocks); load average "
          f"{load_before} before, {_load()} after")
    print("from the last report to all ready (ms):")
    print(f"{'N':>6} {'ms-last':>9} {'wait last':>10} {'(max)':>8} {'burst':>9}"
          f" {'burst-poll':>11} {'us/node':>8}")
    for n in sizes:
        m = med[n]
        print(f"{n:>6} {m['ms_last'] * 1e3:9.1f} {m['last'] * 1e3:10.1f} "
              f"{worst_last[n] * 1e3:8.1f} {m['burst'] * 1e3:9.1f} "
              f"{(m['burst'] - POLL) * 1e3:11.1f} {m['ms_last'] / n * 1e6:8.1f}")
    print("the nodes' side, all N nodes in sequence (s, informational):")
    print(f"{'N':>6} {'join':>9} {'publish':>9} {'leave':>9}")
    for n in sizes:
        m = med[n]
        print(f"{n:>6} {m['join']:9.2f} {m['publish']:9.2f} {m['leave']:9.2f}")
    print(f"growth (t2/t1 = (N2/N1)**k; k <= {LINEAR:g} counts as linear):")
    for key, label in (("ms_last", "ms-last pass"), ("burst", "burst"),
                       ("join", "join, all"), ("leave", "leave, all")):
        for n1, n2, ratio, k in growth(sizes, [med[n][key] for n in sizes]):
            verdict = "ok" if k <= LINEAR else "WORSE THAN LINEAR"
            print(f"  {label:<13} {n1:>5} -> {n2:<5} {ratio:7.2f}x for {n2 / n1:5.1f}x  "
                  f"k = {k:5.2f}   {verdict}")
    big = sizes[-1]
    worst = max(med[big]["burst"], worst_last[big], med[big]["ms_last"])
    print(f"worst case for {big} nodes: {worst * 1e3:.1f} ms   goal <= {GOAL_SECONDS * 1e3:.0f} "
          f"{'ok' if worst <= GOAL_SECONDS else 'OVER'}")
    steepest = max(k for key in ("ms_last", "burst")
                   for _, _, _, k in growth(sizes, [med[n][key] for n in sizes]))
    print(f"growth of the assembly (ms-last pass, burst): k <= {steepest:.2f}   goal linear "
          f"(k <= {LINEAR:g}) {'ok' if steepest <= LINEAR else 'OVER'}")
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding `path`, from /proc/self/mounts."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1]
                if (real == point or real.startswith(point.rstrip("/") + "/")) \
                        and len(point) > len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return kind


if __name__ == "__main__":
    sys.exit(main())
