"""Unit tests of vtorque.vm.addresses: one block of consecutive guest addresses per job,
allocated first-fit in <batch.shared_state_dir>/addresses.json under a file lock."""

from __future__ import annotations

import ipaddress
import itertools
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtorque import config as config_mod
from vtorque.errors import NodeError, ResourceError
from vtorque.vm import addresses
from vtorque.vm.addresses import AddressBlock

BASE = int(ipaddress.IPv4Address("10.9.0.0"))


@pytest.fixture
def small_pool(config_data: dict[str, Any], tmp_path: Path) -> Any:
    """Subnet 10.9.0.0/24, guests get .16 to .40 (25 addresses); also written to a file
    (config.path) for other processes."""
    data = dict(config_data,
                network={"mode": "bridge", "subnet": "10.9.0.0/24", "gateway": "10.9.0.1",
                         "pool_first": 16, "pool_last": 40},
                batch={"shared_state_dir": str(tmp_path / "shared")})
    path = tmp_path / "vtorque.yaml"
    path.write_text(yaml.safe_dump(data))
    return config_mod.load(str(path))


def table(config: Any) -> dict[str, list[int]]:
    path = os.path.join(config.batch.shared_state_dir, addresses.ALLOCATIONS)
    with open(path) as handle:
        return json.load(handle)


def test_first_allocation_starts_at_pool_first(small_pool: Any) -> None:
    block = addresses.allocate(small_pool, "1.h", 4)
    assert block == AddressBlock("1.h", BASE + 16, 4, 24, "10.9.0.1")
    assert [block.address(r) for r in range(4)] == [f"10.9.0.{n}" for n in (16, 17, 18, 19)]
    assert table(small_pool) == {"1.h": [BASE + 16, 4]}
    assert addresses.allocated_jobs(small_pool) == ["1.h"]


def test_allocation_is_idempotent_per_job(small_pool: Any) -> None:
    first = addresses.allocate(small_pool, "1.h", 3)
    addresses.allocate(small_pool, "2.h", 2)
    assert addresses.allocate(small_pool, "1.h", 3) == first
    assert addresses.allocate(small_pool, "1.h", 2) == first     # holds enough already
    with pytest.raises(NodeError, match="holds 3 addresses but needs 5"):
        addresses.allocate(small_pool, "1.h", 5)
    assert table(small_pool) == {"1.h": [BASE + 16, 3], "2.h": [BASE + 19, 2]}


def test_two_jobs_never_overlap_and_release_frees_first_fit(small_pool: Any) -> None:
    a = addresses.allocate(small_pool, "a", 4)
    b = addresses.allocate(small_pool, "b", 4)
    c = addresses.allocate(small_pool, "c", 4)
    assert (a.first, b.first, c.first) == (BASE + 16, BASE + 20, BASE + 24)
    addresses.release(small_pool, "b")
    assert addresses.allocated_jobs(small_pool) == ["a", "c"]
    # A bigger block does not fit the hole; a smaller one takes it (first fit).
    d = addresses.allocate(small_pool, "d", 5)
    assert d.first == BASE + 28
    e = addresses.allocate(small_pool, "e", 3)
    assert e.first == BASE + 20
    f = addresses.allocate(small_pool, "f", 1)
    assert f.first == BASE + 23
    addresses.release(small_pool, "nobody")       # a job without a block is fine
    assert addresses.allocated_jobs(small_pool) == ["a", "c", "d", "e", "f"]


def test_release_without_any_allocation_file(small_pool: Any) -> None:
    addresses.release(small_pool, "1.h")
    assert not os.path.exists(small_pool.batch.shared_state_dir)
    assert addresses.allocated_jobs(small_pool) == []


def test_pool_exhausted_names_the_pool(small_pool: Any) -> None:
    addresses.allocate(small_pool, "a", 20)
    addresses.allocate(small_pool, "b", 5)                    # exactly to pool_last
    with pytest.raises(ResourceError) as info:
        addresses.allocate(small_pool, "c", 1)
    message = str(info.value)
    assert "10.9.0.0/24" in message and "pool_first" in message and "pool_last" in message
    assert "25" in message                                      # what running jobs hold
    assert addresses.allocated_jobs(small_pool) == ["a", "b"]
    addresses.release(small_pool, "a")
    with pytest.raises(ResourceError):
        addresses.allocate(small_pool, "c", 21)                 # bigger than the pool
    assert addresses.allocate(small_pool, "c", 20).first == BASE + 16


@pytest.mark.parametrize("content", ["{not json", "", "[]", '{"a": 5}', '{"a": [1]}',
                                     '"text"', '{"a": ["x", 2]}', "null"])
def test_corrupt_file_is_a_node_error(small_pool: Any, content: str) -> None:
    os.makedirs(small_pool.batch.shared_state_dir)
    path = os.path.join(small_pool.batch.shared_state_dir, addresses.ALLOCATIONS)
    Path(path).write_text(content)
    with pytest.raises(NodeError, match="corrupt"):
        addresses.allocate(small_pool, "1.h", 1)
    with pytest.raises(NodeError, match="corrupt"):
        addresses.release(small_pool, "1.h")
    with pytest.raises(NodeError, match="corrupt"):
        addresses.allocated_jobs(small_pool)
    assert Path(path).read_text() == content           # never overwritten


def test_address_bounds() -> None:
    block = AddressBlock("j", BASE + 250, 3, 24, None)
    assert block.address(0) == "10.9.0.250"
    assert block.address(2) == "10.9.0.252"
    for rank in (-1, 3, 100):
        with pytest.raises(ValueError, match="outside"):
            block.address(rank)


def test_pool_outside_the_subnet_is_refused(small_pool: Any) -> None:
    import dataclasses
    broken = dataclasses.replace(small_pool, network=dataclasses.replace(small_pool.network,
                                                                         pool_last=255))
    with pytest.raises(NodeError, match="pool_first/pool_last"):
        addresses.allocate(broken, "1.h", 1)


# --- several processes at once ----------------------------------------------------------

def _allocate_in_child(config_path: str, job_id: str, size: int, start: Any,
                       results: Any) -> None:
    config = config_mod.load(config_path)
    start.wait(30)
    try:
        block = addresses.allocate(config, job_id, size)
        results.put((job_id, block.first, block.size))
    except Exception as exc:  # noqa: BLE001  (reported to the parent)
        results.put((job_id, repr(exc), 0))


def test_concurrent_allocation_never_overlaps(small_pool: Any) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    sizes = {f"{n}.race": 1 + n % 3 for n in range(8)}           # 3+3+2 x 1,2,3 = 15
    procs = [ctx.Process(target=_allocate_in_child,
                         args=(small_pool.path, job, size, start, results))
             for job, size in sizes.items()]
    for proc in procs:
        proc.start()
    start.set()
    got = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    assert all(isinstance(first, int) for _, first, _ in got), got
    spans = sorted((first, first + size) for _, first, size in got)
    assert len(spans) == 8
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert end <= next_start
    assert {job: [first, size] for job, first, size in got} == table(small_pool)
    assert {job: size for job, _, size in got} == sizes


# --- random sequences -----------------------------------------------------------------------

OPS = st.lists(st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 6), st.integers(1, 9)),
    st.tuples(st.just("release"), st.integers(0, 6), st.just(0))), max_size=30)


@settings(database=None, deadline=None, max_examples=80,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_sequences_keep_blocks_disjoint_and_in_the_pool(small_pool: Any,
                                                               ops: list) -> None:
    path = os.path.join(small_pool.batch.shared_state_dir, addresses.ALLOCATIONS)
    if os.path.exists(path):
        os.remove(path)
    lo, hi = BASE + 16, BASE + 40
    model: dict[str, tuple[int, int]] = {}
    for op, n, size in ops:
        job = f"{n}.h"
        if op == "release":
            addresses.release(small_pool, job)
            model.pop(job, None)
            continue
        if job in model:
            if model[job][1] >= size:
                block = addresses.allocate(small_pool, job, size)
                assert (block.first, block.size) == model[job]
            else:
                with pytest.raises(NodeError, match="holds"):
                    addresses.allocate(small_pool, job, size)
            continue
        used = sorted(model.values())
        try:
            block = addresses.allocate(small_pool, job, size)
        except ResourceError:
            # Refused only when no gap of `size` exists anywhere in the pool.
            edges = [lo] + [s + z for s, z in used]
            assert not any(
                e + size - 1 <= hi and all(e + size <= s or e >= s + z for s, z in used)
                for e in edges), (model, size)
            continue
        # First fit: no earlier start would have fit.
        for s in range(lo, block.first):
            assert not all(s + size <= us or s >= us + uz for us, uz in used) or \
                s + size - 1 > hi
        model[job] = (block.first, block.size)
        spans = sorted(model.values())
        for s, z in spans:
            assert lo <= s and s + z - 1 <= hi
        for (s1, z1), (s2, _) in itertools.pairwise(spans):
            assert s1 + z1 <= s2
        assert {k: list(v) for k, v in model.items()} == table(small_pool)
