"""Stand-in for a NUMA node's sysfs: CPU lists per node and huge page pools, laid out as
the kernel does (sys/devices/system/node/nodeN/{cpulist,hugepages/hugepages-<N>kB/...}
and sys/kernel/mm/hugepages/hugepages-<N>kB/{nr,free,resv}_hugepages)."""

from __future__ import annotations

from pathlib import Path

NODE_DIR = "sys/devices/system/node"
POOLS_DIR = "sys/kernel/mm/hugepages"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def add_nodes(root: Path, cpulists: list[str]) -> None:
    """NUMA node i with CPU list cpulists[i] ('0-3'; '' for a memory-only node)."""
    for node, cpus in enumerate(cpulists):
        _write(root / NODE_DIR / f"node{node}" / "cpulist", cpus + "\n")
    _write(root / NODE_DIR / "online", f"0-{len(cpulists) - 1}\n")


def set_pool(root: Path, page_kib: int, per_node: list[tuple[int, int]],
             reserved: int = 0) -> None:
    """A pool of `page_kib` pages: (total, free) on each NUMA node, node-wide sums."""
    name = f"hugepages-{page_kib}kB"
    for node, (total, free) in enumerate(per_node):
        base = root / NODE_DIR / f"node{node}" / "hugepages" / name
        _write(base / "nr_hugepages", f"{total}\n")
        _write(base / "free_hugepages", f"{free}\n")
        _write(base / "surplus_hugepages", "0\n")
    base = root / POOLS_DIR / name
    _write(base / "nr_hugepages", f"{sum(t for t, _ in per_node)}\n")
    _write(base / "free_hugepages", f"{sum(f for _, f in per_node)}\n")
    _write(base / "resv_hugepages", f"{reserved}\n")
    _write(base / "surplus_hugepages", "0\n")
    _write(base / "nr_overcommit_hugepages", "0\n")
    # libvirt needs a hugetlbfs of the size mounted (vm/hugepages.hugetlbfs_mounted).
    mounts = root / "proc" / "self" / "mounts"
    line = f"hugetlbfs /dev/hugepages-{page_kib} hugetlbfs rw,relatime,pagesize={page_kib}k\n"
    text = mounts.read_text() if mounts.exists() else ""
    if line not in text:
        _write(mounts, text + line)
