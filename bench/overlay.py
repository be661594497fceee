#!/usr/bin/env python3
"""Benchmark: qcow2 overlay creation does not depend on the base image's size.

A 1 GiB and an 8 GiB base image, both sparse (made by `qemu-img create`, nothing
written), in each format an image descriptor may state (qcow2, raw). Each round makes one
overlay on every base through the real code (vtorque/vm/disks.py overlay_argv, run by
vtorque/proc.run, as a guest's start does), in an order rotated per round so drift hits
every base alike, and removes it. `qemu-img create` of an empty qcow2 (no base) is
timed in the same rounds: qemu-img's own start-up, for reference.
Budget (issue 15): for each format, the 8 GiB and the 1 GiB times within 1.2x of each
other (the median over the rounds of each round's own ratio: drift cancels within it).
Only files under a temporary directory (or --dir); no root, no guests.
Usage: bench/overlay.py [--rounds N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vtorque import proc  # noqa: E402
from vtorque.vm import disks  # noqa: E402

BUDGET = 1.2
TIMEOUT = 60.0
GIB = 1 << 30
SIZES = (1, 8)                 # GiB
FORMATS = ("qcow2", "raw")


def within(a: float, b: float, factor: float) -> bool:
    """a and b within `factor` of each other (either way)."""
    return max(a, b) <= factor * min(a, b)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _size(n: int) -> str:
    return f"{n / GIB:g} GiB" if n >= GIB else f"{n // 1024} KiB"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc.run(argv, timeout=TIMEOUT)
    return time.perf_counter() - start


def make_base(work: Path, fmt: str, gib: int) -> Path:
    path = work / f"base-{gib}g.{fmt}"
    proc.run([disks.QEMU_IMG, "create", "-q", "-f", fmt, str(path), f"{gib}G"], timeout=TIMEOUT)
    os.chmod(path, 0o644)
    return path


def check_overlay(overlay: Path, base: Path, fmt: str, gib: int) -> None:
    """The overlay is a qcow2 on exactly this base, of the base's size."""
    info = json.loads(proc.run([disks.QEMU_IMG, "info", "-U", "--output=json", str(overlay)],
                               timeout=TIMEOUT).stdout)
    if (info.get("format") != "qcow2" or info.get("backing-filename") != str(base)
            or info.get("backing-filename-format") != fmt or info.get("virtual-size") != gib * GIB):
        raise SystemExit(f"bench: unexpected overlay {overlay}: {info}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=51, choices=range(3, 501))
    parser.add_argument("--dir", help="where to put the base images and overlays (default: a "
                        "new temporary directory, removed afterwards)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-overlay-", dir=args.dir))
    try:
        return run(args.rounds, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(rounds: int, work: Path) -> int:
    load_before = _load()
    bases = {(fmt, gib): make_base(work, fmt, gib) for fmt in FORMATS for gib in SIZES}
    cases = [*bases, ("scratch", 1)]
    samples: dict[tuple[str, int], list[float]] = {case: [] for case in cases}
    overlay = work / "overlay.qcow2"
    for (fmt, gib), base in bases.items():       # once, untimed: the result is right
        proc.run(disks.overlay_argv(str(base), fmt, str(overlay)), timeout=TIMEOUT)
        check_overlay(overlay, base, fmt, gib)
        overlay.unlink()
    deadline = time.monotonic() + 600
    for r in range(rounds):
        if time.monotonic() > deadline:
            raise SystemExit("bench: over 10 minutes; stopping")
        for case in cases[r % len(cases):] + cases[:r % len(cases)]:
            fmt, gib = case
            if fmt == "scratch":
                argv = [disks.QEMU_IMG, "create", "-q", "-f", "qcow2", str(overlay), f"{gib}G"]
            else:
                argv = disks.overlay_argv(str(bases[case]), fmt, str(overlay))
            samples[case].append(timed(argv))
            overlay.unlink()
    med = {case: statistics.median(v) * 1000 for case, v in samples.items()}
    print(f"rounds: {rounds} (medians, ms; order rotated per round); {disks.QEMU_IMG} "
          f"create through proc.run; load average {load_before} before, {_load()} after")
    for (fmt, gib), base in bases.items():
        st = base.stat()
        print(f"overlay on a {gib} GiB {fmt:5} base:  {med[fmt, gib]:6.1f}   (base: virtual "
              f"{gib} GiB, file {_size(st.st_size)}, {_size(st.st_blocks * 512)} allocated)")
    print(f"empty 1 GiB qcow2, no base:       {med['scratch', 1]:6.1f}   (qemu-img start-up, "
          "for reference)")
    for fmt in FORMATS:
        small, big = samples[fmt, SIZES[0]], samples[fmt, SIZES[-1]]
        ratio = statistics.median(b / a for a, b in zip(small, big, strict=True))
        ok = within(1.0, ratio, BUDGET)
        print(f"{fmt:5}: {SIZES[-1]} GiB / {SIZES[0]} GiB = {ratio:5.3f} (median of the rounds' "
              f"own ratios)   budget within {BUDGET:g}x {'ok' if ok else 'OVER'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
