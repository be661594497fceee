"""The node's NUMA topology, and where each guest's vCPUs and memory go on it.

Everything here is pure but read_topology. A guest takes its share of the cores the batch
system gave the job (ordered by host NUMA node, so a share stays inside one node when it
can); its memory is bound to the nodes of those cores, split between them like its vCPUs,
and a guest whose cores span host nodes gets one guest NUMA cell per host node.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vtorque.config import Config
from vtorque.errors import NodeError
from vtorque.request import VmRequest

NODE_DIR = "sys/devices/system/node"
_NODE = re.compile(r"node([0-9]{1,5})")
_RANGE = re.compile(r"([0-9]{1,6})(?:-([0-9]{1,6}))?")
MAX_CPUS = 1 << 16


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The kernel's list format ('0-3,8,10-11'; empty: none) -> sorted CPU numbers."""
    cpus: set[int] = set()
    text = text.strip()
    for part in text.split(",") if text else ():
        match = _RANGE.fullmatch(part)
        if not match:
            raise ValueError(f"not a CPU list: {text[:80]!r}")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first or last >= MAX_CPUS:
            raise ValueError(f"not a CPU list: {text[:80]!r}")
        cpus.update(range(first, last + 1))
    return tuple(sorted(cpus))


def cpulist(numbers) -> str:
    """Numbers -> the list format libvirt and the kernel use ('0-3,8')."""
    out: list[str] = []
    ordered = sorted(set(numbers))
    start = prev = None
    for n in ordered + [None]:
        if n is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    return ",".join(out)


@dataclass(frozen=True)
class Topology:
    """Host NUMA nodes with CPUs: (node, its CPUs), by node number."""
    nodes: tuple[tuple[int, tuple[int, ...]], ...]

    def node_of(self, cpu: int) -> int | None:
        return next((node for node, cpus in self.nodes if cpu in cpus), None)


def read_topology(sysfs_root: str) -> Topology:
    """The node's NUMA nodes and their CPUs (memory-only nodes left out). A kernel
    without NUMA support has no node directory: an empty topology."""
    base = os.path.join(sysfs_root, NODE_DIR)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return Topology(())
    except OSError as exc:
        raise NodeError(f"cannot read {base}: {exc.strerror}") from None
    nodes = []
    for name in names:
        match = _NODE.fullmatch(name)
        if not match:
            continue
        path = os.path.join(base, name, "cpulist")
        try:
            with open(path) as handle:
                cpus = parse_cpulist(handle.read(4096))
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            raise NodeError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
                            ) from None
        if cpus:
            nodes.append((int(match[1]), cpus))
    return Topology(tuple(sorted(nodes)))


@dataclass(frozen=True)
class Cell:
    """The part of a guest on one host NUMA node."""
    host_node: int
    vcpus: tuple[int, ...]       # the guest's vCPU numbers
    cores: tuple[int, ...]       # the host cores they run on
    memory_mib: int

    @property
    def vcpu_list(self) -> str:
        return cpulist(self.vcpus)


@dataclass(frozen=True)
class GuestPlacement:
    """Where one guest runs. `cores`: its share of host cores (empty: not known, it runs
    where the kernel puts it); pinned: vCPU i on cores[i]. `cells`: its vCPUs and memory
    per host node (empty: memory not bound). `numatune`: the binding is worth writing
    into the domain (the host has more than one NUMA node)."""
    cores: tuple[int, ...] = ()
    pinned: bool = False
    cells: tuple[Cell, ...] = ()
    numatune: bool = False

    @property
    def memory_nodeset(self) -> str | None:
        """Host nodes holding the guest's memory, strict (None: not bound here)."""
        return cpulist(c.host_node for c in self.cells) if self.numatune and self.cells \
            else None

    @property
    def guest_cells(self) -> tuple[Cell, ...]:
        """The guest's NUMA topology: one cell per host node, when it spans several."""
        return self.cells if self.numatune and len(self.cells) > 1 else ()

    @property
    def vcpu_sets(self) -> tuple[str, ...]:
        """An unpinned guest's vCPUs each kept on its share of the job's cores (on its
        cell's cores when it has a guest topology); () when pinned or not known."""
        if self.pinned or not self.cores:
            return ()
        if not self.guest_cells:
            return (cpulist(self.cores),) * len(self.cores)
        out: dict[int, str] = {}
        for cell in self.guest_cells:
            out.update((vcpu, cpulist(cell.cores)) for vcpu in cell.vcpus)
        return tuple(out[v] for v in sorted(out))

    def memory_by_node(self) -> dict[int, int]:
        """MiB of the guest's memory per host node ({}: wherever the kernel puts it)."""
        return {c.host_node: c.memory_mib for c in self.cells}


def order_by_node(cores: tuple[int, ...], topology: Topology) -> tuple[int, ...]:
    """Cores grouped by host node, then by number (a core of no known node last)."""
    last = 1 << 20
    return tuple(sorted(cores, key=lambda c: (topology.node_of(c) if topology.node_of(c)
                                              is not None else last, c)))


def split_memory(memory_mib: int, weights: list[int], granule_mib: int) -> list[int] | None:
    """`memory_mib` split like `weights`, in whole granules (huge pages), at least one
    each; None when there are fewer granules than parts."""
    granules = memory_mib // granule_mib
    if granules < len(weights):
        return None
    total = sum(weights)
    shares = [1 + (granules - len(weights)) * w // total for w in weights]
    # What the rounding left goes to the parts with the most vCPUs first.
    for index in sorted(range(len(weights)), key=lambda i: -weights[i]):
        if sum(shares) >= granules:
            break
        shares[index] += 1
    return [s * granule_mib for s in shares]


def place(cores: tuple[int, ...], memory_mib: int, topology: Topology,
          granule_mib: int = 1) -> tuple[Cell, ...]:
    """The cells of a guest whose vCPU i runs on cores[i] (cores already ordered by
    node): () when a core is on no known node. A guest too small to give every node a
    granule of memory keeps all of it on the node with most of its vCPUs."""
    nodes = [topology.node_of(c) for c in cores]
    if not cores or None in nodes:
        return ()
    order = list(dict.fromkeys(nodes))
    vcpus = {n: tuple(i for i, m in enumerate(nodes) if m == n) for n in order}
    sizes = split_memory(memory_mib, [len(vcpus[n]) for n in order], granule_mib)
    if sizes is None:
        main = max(order, key=lambda n: len(vcpus[n]))
        return (Cell(main, tuple(range(len(cores))), cores, memory_mib),)
    return tuple(Cell(n, vcpus[n], tuple(cores[i] for i in vcpus[n]), size)
                 for n, size in zip(order, sizes, strict=True))


def guest_placements(config: Config, request: VmRequest, job_cores: tuple[int, ...] | None,
                     topology: Topology | None) -> tuple[GuestPlacement, ...]:
    """Where each of the node's guests of `request` runs. `job_cores`: the cores the
    batch system gave the job here (None: not known). Guests take consecutive shares of
    them, grouped by host node; pinned guests without them take the cores after the
    host's reserve. Memory is bound only with numa.bind and a known topology."""
    topology = topology or Topology(())
    count, size = request.vms_per_node, request.vcpus
    if job_cores is not None:
        ordered = order_by_node(tuple(job_cores), topology)
        shares = [ordered[i * size:(i + 1) * size] for i in range(count)]
    elif request.vcpu_pinning:
        first = config.host_reserve.cores
        shares = [tuple(range(first + i * size, first + (i + 1) * size)) for i in range(count)]
    else:
        return (GuestPlacement(),) * count
    granule = request.hugepage_mib or 1
    out = []
    for share in shares:
        share = order_by_node(tuple(share), topology) if len(share) == size else ()
        cells = place(share, request.ram_mib, topology, granule) if config.numa.bind else ()
        out.append(GuestPlacement(cores=share, pinned=request.vcpu_pinning and bool(share),
                                  cells=cells, numatune=len(topology.nodes) > 1))
    return tuple(out)
