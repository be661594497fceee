"""The node's huge page pools as the kernel counts them in sysfs: one pool per page size,
each with its share on every NUMA node."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vtorque.errors import NodeError
from vtorque.vm.numa import NODE_DIR

POOLS_DIR = "sys/kernel/mm/hugepages"
_POOL = re.compile(r"hugepages-([0-9]{1,10})kB")
_NODE = re.compile(r"node([0-9]{1,5})")


@dataclass(frozen=True)
class NodePool:
    node: int
    total: int                 # nr_hugepages
    free: int                  # free_hugepages


@dataclass(frozen=True)
class Pool:
    page_kib: int
    total: int                 # nr_hugepages
    free: int                  # free_hugepages
    reserved: int              # resv_hugepages: promised to mappings, not yet faulted in
    nodes: tuple[NodePool, ...] = ()

    @property
    def available(self) -> int:
        """Free pages nobody has been promised (the kernel counts resv only node-wide)."""
        return max(self.free - self.reserved, 0)

    def on_node(self, node: int) -> NodePool | None:
        return next((n for n in self.nodes if n.node == node), None)


def page_text(page_kib: int) -> str:
    """2048 -> '2 MiB', 1048576 -> '1 GiB'."""
    for unit, size in (("GiB", 1 << 20), ("MiB", 1 << 10)):
        if page_kib % size == 0:
            return f"{page_kib // size} {unit}"
    return f"{page_kib} KiB"


def _count(path: str) -> int:
    try:
        with open(path) as handle:
            text = handle.read(64).strip()
    except OSError as exc:
        raise NodeError(f"cannot read {path}: {exc.strerror}") from None
    if not text.isdigit():
        raise NodeError(f"{path}: expected a number of pages, got {text[:20]!r}")
    return int(text)


def _pool_names(directory: str) -> dict[int, str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise NodeError(f"cannot read {directory}: {exc.strerror}") from None
    return {int(m[1]): name for name in names if (m := _POOL.fullmatch(name))}


def read_pools(sysfs_root: str) -> tuple[Pool, ...]:
    """Every huge page pool of the node, by page size; () on a kernel without them."""
    base = os.path.join(sysfs_root, POOLS_DIR)
    node_base = os.path.join(sysfs_root, NODE_DIR)
    try:
        node_dirs = sorted((int(m[1]), name) for name in os.listdir(node_base)
                           if (m := _NODE.fullmatch(name)))
    except FileNotFoundError:
        node_dirs = []
    except OSError as exc:
        raise NodeError(f"cannot read {node_base}: {exc.strerror}") from None
    pools = []
    for page_kib, name in sorted(_pool_names(base).items()):
        directory = os.path.join(base, name)
        nodes = []
        for node, node_name in node_dirs:
            per_node = os.path.join(node_base, node_name, "hugepages", name)
            if os.path.isdir(per_node):
                nodes.append(NodePool(node, _count(os.path.join(per_node, "nr_hugepages")),
                                      _count(os.path.join(per_node, "free_hugepages"))))
        pools.append(Pool(page_kib, _count(os.path.join(directory, "nr_hugepages")),
                          _count(os.path.join(directory, "free_hugepages")),
                          _count(os.path.join(directory, "resv_hugepages")), tuple(nodes)))
    return tuple(pools)


def pool_of(pools: tuple[Pool, ...], page_kib: int) -> Pool | None:
    return next((p for p in pools if p.page_kib == page_kib), None)


MOUNTS = "proc/self/mounts"


def hugetlbfs_mounted(sysfs_root: str, page_kib: int, default_kib: int = 2048) -> bool:
    """Whether a hugetlbfs of `page_kib` pages is mounted (under `sysfs_root`'s
    proc/self/mounts): libvirt puts a guest's huge pages in one and refuses the guest
    without ("hugetlbfs filesystem is not mounted"). A mount without pagesize= has the
    kernel's default size."""
    try:
        with open(os.path.join(sysfs_root, MOUNTS)) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[2] != "hugetlbfs":
            continue
        options = dict(o.partition("=")[::2] for o in fields[3].split(","))
        size = options.get("pagesize")
        kib = default_kib if not size else _size_kib(size)
        if kib == page_kib:
            return True
    return False


def _size_kib(text: str) -> int | None:
    units = {"K": 1, "M": 1024, "G": 1024 * 1024}
    number, unit = text[:-1], text[-1:].upper()
    if unit in units and number.isdigit():
        return int(number) * units[unit]
    return None
