"""The pure helpers of the scale benchmarks (bench/assembly.py, bench/overlay.py,
bench/hooks.py): how sizes are read, how growth and budgets are judged."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


assembly = _load("assembly")
overlay = _load("overlay")
hooks = _load("hooks")


def test_sizes_are_read_ascending():
    assert assembly.parse_sizes("16,256,4096") == [16, 256, 4096]
    assert assembly.parse_sizes("2, 3,") == [2, 3]


@pytest.mark.parametrize("text", ["16", "256,16", "16,16", "1,16", "16,70000", "a,b"])
def test_bad_sizes_are_refused(text):
    with pytest.raises(ValueError):
        assembly.parse_sizes(text)


def test_growth_gives_the_exponent_between_consecutive_sizes():
    rows = assembly.growth([16, 256, 4096], [0.001, 0.016, 4.096])
    assert [(a, b) for a, b, _, _ in rows] == [(16, 256), (256, 4096)]
    assert rows[0][2] == pytest.approx(16.0) and rows[0][3] == pytest.approx(1.0)  # linear
    assert rows[1][2] == pytest.approx(256.0) and rows[1][3] == pytest.approx(2.0)  # quadratic
    assert assembly.growth([2, 4], [0.0, 1.0])[0][2:] == (math.inf, math.inf)
    assert assembly.growth([2, 4], [1.0, 1.0])[0][3] == 0.0                      # constant


def test_ready_status_names_one_guest_per_node():
    status = assembly.ready("node00003.bench", 3)
    assert status.state == "ready" and status.run == 0
    assert status.guests == [{"rank": 3, "name": "vt-bench-3", "hostname": "vm3",
                              "mac": "52:54:00:00:00:03"}]
    assert len(set(assembly.node_names(4096))) == 4096


def test_within_is_symmetric():
    assert overlay.within(10.0, 12.0, 1.2) and overlay.within(12.0, 10.0, 1.2)
    assert not overlay.within(10.0, 12.1, 1.2) and not overlay.within(12.1, 10.0, 1.2)


def test_verdict_says_ok_or_over():
    assert hooks.verdict(10.0, 10) == "budget <= 10 ok"
    assert hooks.verdict(10.1, 10) == "budget <= 10 OVER"
    assert hooks.verdict(74.9, hooks.VSUB_BUDGET) == "budget <= 75 ok"
