#!/usr/bin/env python3
"""Benchmark: snapshot starts against cold boots, and k guests started at once.

For the same image (the test guest) and node, measured in one run, alternating so that
drift hits both sides: the wall time of `vtorque vm up` to ready with snapshots off
(every guest boots) and on (every guest is restored from the node's template), for
k = 1, 2 and 4 guests started in parallel. The first snapshot start, which boots and
saves the template, is reported apart. Printed: snapshot/cold per k (budget: <= 0.25),
t(k)/t(1) per mode (k guests against one, on this machine's cores), the template's size
and build time, and the restore's own share (QEMU started, state loaded, devices
hot-plugged), which docs/design.md's KVM model uses.

Needs root, the test image (scripts/setup) and libvirtd (scripts/netns-libvirtd start).
Usage: bench/snapshot.py [--rounds N] [--pool DIR] [--sizes 1,2,4]
(the default sizes are those of 1, 2, 4 that the host's cores can hold)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vtorque.journal import Journal, JobPaths  # noqa: E402
from vtorque.vm.template_store import TemplateStore  # noqa: E402

BUDGET = 0.25


def write_config(path: Path, work: Path, pool: str, enabled: bool) -> None:
    path.write_text(yaml.safe_dump({
        "image_pool": pool, "state_dir": str(work / "state"),
        "log_file": str(work / "vtorque.log"), "hypervisor": "qemu",
        "min_free_space": "64M", "host_reserve": {"cores": 0, "memory": "512M"},
        "defaults": {"img": "testguest", "ram": "256M"},
        "snapshots": {"enabled": enabled}}))


def vm_up(config: Path, job: str, k: int) -> tuple[float, list[dict]]:
    """Seconds of `vtorque vm up` for k guests, and the guests it reports."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "vtorque", "--config", str(config), "vm",
                           "up", "--job", job, "--request", f"vms_per_node={k}", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: vm up failed: {done.stderr.strip()}")
    return seconds, json.loads(done.stdout)["guests"]


def vm_down(config: Path, job: str) -> None:
    subprocess.run([sys.executable, "-m", "vtorque", "--config", str(config), "vm", "down",
                    "--job", job], check=True, capture_output=True, cwd=REPO, timeout=300)


def start_seconds(work: Path, job: str) -> list[float]:
    """Each guest's start as the journal timed it (restore: QEMU, load, hot-plug)."""
    paths = JobPaths.for_job(job, str(work / "state"), str(work / "ramdisk"))
    return [e["seconds"] for e in Journal(paths.journal).entries()
            if e.get("event") == "guest-started" and "seconds" in e]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, 11))
    parser.add_argument("--pool", default=os.environ.get("VTORQUE_TEST_POOL",
                                                         "/var/lib/vtorque/test-images"))
    # k guests of 1 vCPU each fit a node of k cores: 1, 2 and 4 as the host's cores permit.
    cores = os.cpu_count() or 1
    parser.add_argument("--sizes", default=",".join(str(k) for k in (1, 2, 4) if k <= cores))
    args = parser.parse_args()
    sizes = [int(k) for k in args.sizes.split(",")]
    if not sizes or any(not 1 <= k <= 8 for k in sizes) or sizes[0] != 1:
        raise SystemExit("bench: --sizes: 1 first, then up to 8 guests")
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-snap-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    cold, snap = work / "cold.yaml", work / "snapshot.yaml"
    write_config(cold, work, args.pool, False)
    write_config(snap, work, args.pool, True)
    times: dict[tuple[str, int], list[float]] = {}
    restores: list[float] = []
    job_no = 0

    def run(mode: str, k: int) -> float:
        nonlocal job_no
        job_no += 1
        job = f"{os.getpid()}{job_no:03d}"
        seconds, guests = vm_up(cold if mode == "cold" else snap, job, k)
        want = "boot" if mode == "cold" else "snapshot"
        if any(g["started"] != want for g in guests):
            vm_down(cold, job)
            raise SystemExit(f"bench: {mode} run of {k} guest(s) started "
                             f"{[g['started'] for g in guests]} (see {work}/vtorque.log)")
        if mode == "snapshot":
            restores.extend(start_seconds(work, job))
        vm_down(cold, job)
        return seconds

    try:
        first = run("snapshot", 1)                  # boots and saves the template
        restores.clear()
        store = TemplateStore(str(work / "state"))
        [(_key, meta)] = store.entries()
        for _round in range(args.rounds):
            for k in sizes:
                for mode in ("cold", "snapshot"):
                    times.setdefault((mode, k), []).append(run(mode, k))
    finally:
        for config in (cold,):
            with_guests = subprocess.run(
                [sys.executable, "-m", "vtorque", "--config", str(config), "vm", "list",
                 "--json"], capture_output=True, text=True, cwd=REPO, timeout=60)
            for guest in json.loads(with_guests.stdout or "[]"):
                vm_down(config, guest["job_id"])
        shutil.rmtree(work, ignore_errors=True)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"rounds: {args.rounds} (medians; TCG, 1 vCPU, 256 MiB, the test guest; "
          f"{os.cpu_count()} host cores)")
    print(f"first snapshot start, template built: {first:6.2f} s (template build "
          f"{meta['build_seconds']:.2f} s, state {meta['size'] / 2**20:.0f} MiB)")
    print(f"restore per guest (QEMU, load, hot-plug): {statistics.median(restores):.2f} s "
          f"median of {len(restores)}")
    ok = True
    for k in sizes:
        c, s = median[("cold", k)], median[("snapshot", k)]
        ratio = s / c
        ok &= ratio <= BUDGET
        print(f"k={k}: cold {c:6.2f} s {fmt(times[('cold', k)])}  snapshot {s:6.2f} s "
              f"{fmt(times[('snapshot', k)])}  snapshot/cold {ratio:5.3f} budget <= "
              f"{BUDGET} {'ok' if ratio <= BUDGET else 'OVER'}")
    for mode in ("cold", "snapshot"):
        base = median[(mode, 1)]
        growth = "  ".join(f"t({k})/t(1)={median[(mode, k)] / base:5.2f}" for k in sizes[1:])
        print(f"{mode:8s} parallel starts: {growth}")
    return 0 if ok else 1


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
