"""Huge pages counted for the guests vtorque starts on this node, so that two jobs never
both pass for the same free pages.

The kernel's free count drops only once QEMU has allocated a guest's memory (at start:
the domain asks for immediate allocation). Between the check and that moment the pages
are held in `<state_dir>/.hugepage-reservations.json` (one entry per job, changed only
under the ledger's lock, root's own, 0600): every check subtracts what other jobs hold
and have not started yet. A job's entry is marked started once its guests run (their
pages are then out of the kernel's free count) and removed by its teardown; a job that
died without its epilogue keeps it until the reaper finds the job over.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from vtorque.config import Config
from vtorque.errors import NodeError, ResourceError
from vtorque.ledger import Ledger
from vtorque.request import VmRequest
from vtorque.text import one_line
from vtorque.units import format_mib
from vtorque.vm import HUGEPAGE_LEDGER
from vtorque.vm.hugepages import Pool, hugetlbfs_mounted, page_text, pool_of, read_pools
from vtorque.vm.numa import GuestPlacement

# The demand of guests whose memory is not bound to a NUMA node: any node's pages do.
ANY_NODE = "*"


def _check_entry(value: dict) -> dict:
    if set(value) != {"page_kib", "pages", "started", "since"}:
        raise KeyError("fields")
    if not isinstance(value["page_kib"], int) or not isinstance(value["started"], bool):
        raise TypeError("page_kib, started")
    for node, pages in value["pages"].items():
        if (node != ANY_NODE and not node.isdigit()) or not isinstance(pages, int):
            raise ValueError("pages")
    return value


def ledger(config: Config) -> Ledger:
    return Ledger(os.path.join(config.state_dir, HUGEPAGE_LEDGER), "huge page reservations",
                  check=_check_entry, mode=0o600)


def demand(request: VmRequest, placements: tuple[GuestPlacement, ...]) -> dict[str, int]:
    """Pages the node's guests of `request` take, per host NUMA node (ANY_NODE: unbound)."""
    page = request.hugepage_mib
    pages: dict[str, int] = {}
    for placement in placements:
        by_node = placement.memory_by_node() or {ANY_NODE: request.ram_mib}
        for node, mib in by_node.items():
            pages[str(node)] = pages.get(str(node), 0) + mib // page
    return pages


def _held(table: Mapping, job_id: str, page_kib: int) -> dict[str, int]:
    """Pages other jobs hold and their QEMU has not allocated yet, per node key."""
    held: dict[str, int] = {}
    for other, entry in table.items():
        if other == job_id or entry["started"] or entry["page_kib"] != page_kib:
            continue
        for node, count in entry["pages"].items():
            held[node] = held.get(node, 0) + count
    return held


def _guests_on(request: VmRequest, placements: tuple[GuestPlacement, ...], node: str) -> str:
    nodes = [{str(n) for n in p.memory_by_node()} for p in placements]
    touching = [n for n in nodes if node in n]
    split = " split over NUMA nodes" if any(len(n) > 1 for n in touching) else ""
    return f"{len(touching)} guest(s) x {format_mib(request.ram_mib)}{split}"


def shortfall(request: VmRequest, placements: tuple[GuestPlacement, ...],
              pools: tuple[Pool, ...], held: Mapping[str, int], node_name: str) -> str | None:
    """Why the node's pool cannot hold the guests now (one line), or None (pure)."""
    page_kib = request.hugepage_mib * 1024
    size = page_text(page_kib)
    asked = f"-vm hugepages={format_mib(request.hugepage_mib)}"
    name = one_line(node_name, 80)
    pool = pool_of(pools, page_kib)
    if pool is None:
        return f"{asked}: node {name} has no pool of {size} huge pages"
    want = demand(request, placements)
    unbound = held.get(ANY_NODE, 0)
    for node, need in sorted(want.items()):
        if node == ANY_NODE:
            continue
        per_node = pool.on_node(int(node))
        free = per_node.free if per_node else 0
        others = held.get(node, 0) + unbound
        if need > free - others:
            line = (f"{asked} needs {need} pages of {size} on NUMA node {node} for "
                    f"{_guests_on(request, placements, node)}, node {name} has "
                    f"{max(free - others, 0)} free there")
            return line + _detail(free, others, per_node.total if per_node else 0, need)
    need = sum(want.values())
    others = sum(held.values())
    if need > pool.available - others:
        line = (f"{asked} needs {need} pages of {size} for {len(placements)} guest(s) x "
                f"{format_mib(request.ram_mib)}, node {name} has "
                f"{max(pool.available - others, 0)} free")
        if pool.reserved:
            line += f" ({pool.reserved} of its {pool.free} free are promised to mappings)"
        return line + _detail(pool.available, others, pool.total, need)
    return None


def _detail(free: int, others: int, total: int, need: int) -> str:
    parts = []
    if others:
        parts.append(f"{free} in the kernel's free count, {others} held for other jobs' "
                     "guests being started")
    if total < need:
        parts.append(f"its pool holds {total} in all")
    return f" ({'; '.join(parts)})" if parts else ""


def check(config: Config, job_id: str, request: VmRequest,
          placements: tuple[GuestPlacement, ...], node_name: str) -> None:
    """Refuse (ResourceError: the node lacks the pages now, the job fits elsewhere or
    later) guests the node's pool cannot hold, without holding anything."""
    if not request.hugepage_mib:
        return
    page_kib = request.hugepage_mib * 1024
    if not hugetlbfs_mounted(config.numa.sysfs_root, page_kib):
        # A node's set-up, not the job's: libvirt would refuse every such guest here.
        size = "1G" if page_kib == 1 << 20 else f"{page_kib // 1024}M"
        raise NodeError(f"node {node_name} has no hugetlbfs of {page_text(page_kib)} pages "
                        f"mounted, which libvirt needs for -vm hugepages (mount -t hugetlbfs "
                        f"-o pagesize={size} none DIR, then restart libvirtd)")
    problem = shortfall(request, placements, read_pools(config.numa.sysfs_root),
                        _held(ledger(config).read(), job_id, page_kib), node_name)
    if problem:
        raise ResourceError(problem)


def reserve(config: Config, job_id: str, request: VmRequest,
            placements: tuple[GuestPlacement, ...], node_name: str) -> None:
    """Check again and hold the guests' pages, under the ledger's lock (all or none)."""
    if not request.hugepage_mib:
        return
    page_kib = request.hugepage_mib * 1024
    with ledger(config).change() as table:
        table.pop(job_id, None)
        problem = shortfall(request, placements, read_pools(config.numa.sysfs_root),
                            _held(table, job_id, page_kib), node_name)
        if problem:
            raise ResourceError(problem)
        table[job_id] = {"page_kib": page_kib, "pages": demand(request, placements),
                         "started": False, "since": round(time.time(), 3)}


def mark_started(config: Config, job_id: str) -> None:
    """The job's guests run: their pages are out of the kernel's free count now."""
    with ledger(config).change(create=False) as table:
        if job_id in table:
            table[job_id] = {**table[job_id], "started": True}


def release(config: Config, job_id: str) -> None:
    """Forget the job's pages (its guests are gone); a job without any is fine."""
    if not os.path.exists(ledger(config).path):
        return
    with ledger(config).change(create=False) as table:
        table.pop(job_id, None)


def holding_jobs(config: Config) -> set[str]:
    """Jobs with an entry on this node (for teardown and the reaper)."""
    if not os.path.exists(ledger(config).path):
        return set()
    return set(ledger(config).read())


def pending(config: Config) -> dict[int, int]:
    """Pages held for guests being started, per page size in KiB (for the doctor)."""
    out: dict[int, int] = {}
    for entry in ledger(config).read().values():
        if not entry["started"]:
            out[entry["page_kib"]] = out.get(entry["page_kib"], 0) + sum(entry["pages"].values())
    return out
