"""What the batch system allocated a job on each of its nodes, from each scheduler's own
record: the cores (and which of the host's CPUs, where the server names them) and the
memory. A VM job's guests on a node must fit in what the job holds there
(request.check_fits_allocation), not merely in the node.

Torque (`qstat -f -x`)
    cores    exec_host slots on the host (`n1/0-1,3` = 3).
    which    cpuset_string (`n1:0-3+n2:4-7`, Torque 6 with cgroups: the server's choice
             of CPUs per host); without it the exec_host slot numbers, which Torque's
             own cpusets take as the CPUs' OS indices (resmom/linux/cpuset.c).
    memory   Torque's own rule for a host's share (resmom/start_exec.c,
             get_memory_limit_from_resource_list): Resource_List.mem (else vmem) is per
             job and split by slots, mem * slots here / slots of the job (rounded down);
             else pmem (else pvmem) is per slot, pmem * slots here. None of them: Torque
             bounds no memory and neither does this check.
OpenPBS / PBS Professional (`qstat -f -F json -x`)
    cores    the ncpus of the exec_vnode chunks on the host, memory their mem. Chunk i of
             exec_vnode runs on the host of exec_host entry i (both list one entry per
             chunk); a vnode part without mem leaves the host's memory unbounded. The
             server does not choose CPUs (the MoM's cgroup hook does): `cores` is None.
Slurm (`scontrol show job -dd`, or JSON)
    The detail lines `Nodes=... CPU_IDs=0-1 Mem=1000`: CPUs per node, their ids (Slurm's
    abstract CPU ids, which follow the node's socket/core/thread order; the task/cgroup
    plugin's cpuset is the OS's view) and the memory in MiB (0: none allocated). Without
    them: the CPUs as the record spreads them, MinMemoryNode per node or MinMemoryCPU
    per CPU (0 is "all of the node": unbounded here).

Pure functions; a record that cannot be read raises ValueError, which the adapters turn
into their own error for a VM job and ignore for any other (nothing is decided from the
allocation of a job without VMs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vtorque.batch.base import expand_id_ranges, node_index
from vtorque.errors import NodeError
from vtorque.text import one_line
from vtorque.units import parse_pbs_size_bytes, parse_slurm_size_mib


@dataclass(frozen=True)
class NodeAllocation:
    """What the batch system allocated one job on one node (JobContext.allocations):
    what the job's guests there must fit in."""
    cpus: int                             # cores (Torque slots, PBS ncpus, Slurm CPUs)
    memory_mib: int | None = None         # None: the batch system bounds no memory here
    cores: tuple[int, ...] | None = None  # the host's CPU ids the job holds here, where the
                                          # server names them (for pinning); None: it does not
    cpus_from: str = ""                   # the record's attribute each number comes from,
    memory_from: str = ""                 # for messages
    cores_from: str = ""


_MIB = 20
_NCPUS = re.compile(r"[0-9]{1,9}")
_VNODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\[\]-]{0,254}")


def _short_index(name: str, nodes: Sequence[str]) -> int:
    try:
        return node_index(name, nodes)
    except NodeError:
        raise ValueError(f"{one_line(name, 80)!r} is not one of the job's nodes") from None


# --- Torque --------------------------------------------------------------------------------

def torque(attrs: Mapping[str, str], nodes: Sequence[str], slots: Sequence[int]
           ) -> tuple[NodeAllocation, ...]:
    if not nodes:
        return ()
    memory, memory_from = _torque_memory(attrs, slots)
    cpuset = attrs.get("cpuset_string", "").strip()
    if cpuset:
        cores, cores_from = _torque_cpuset(cpuset, nodes), "cpuset_string"
    else:
        cores, cores_from = _exec_host_slot_ids(attrs.get("exec_host", ""), nodes), "exec_host"
    return tuple(NodeAllocation(cpus=slots[i], memory_mib=memory[i], cores=cores[i],
                                cpus_from="exec_host", memory_from=memory_from,
                                cores_from=cores_from if cores[i] is not None else "")
                 for i in range(len(nodes)))


def _torque_memory(attrs: Mapping[str, str], slots: Sequence[int]
                   ) -> tuple[list[int | None], str]:
    total = sum(slots)
    for key, per_job in (("mem", True), ("vmem", True), ("pmem", False), ("pvmem", False)):
        text = attrs.get(f"Resource_List.{key}", "").strip()
        if not text:
            continue
        size = parse_pbs_size_bytes(text)
        if size == 0:
            continue                        # Torque: 0 sets no limit
        if per_job:
            return [(size * s // total) >> _MIB if total else None for s in slots], \
                f"Resource_List.{key}"
        return [(size * s) >> _MIB for s in slots], f"Resource_List.{key}"
    return [None] * len(slots), ""


def _torque_cpuset(text: str, nodes: Sequence[str]) -> list[tuple[int, ...] | None]:
    """`n1:0-3+n2:4-7` -> the CPUs of each of `nodes` (None for a node it omits)."""
    out: list[tuple[int, ...] | None] = [None] * len(nodes)
    for part in text.split("+"):
        host, sep, ranges = part.strip().partition(":")
        index = _short_index(host, nodes)
        if not sep or not ranges.strip():
            raise ValueError(f"cpuset_string part {one_line(part, 60)!r} names no CPUs")
        if out[index] is not None:
            raise ValueError(f"cpuset_string names {one_line(host, 60)!r} twice")
        out[index] = expand_id_ranges(ranges)
    return out


def _exec_host_slot_ids(text: str, nodes: Sequence[str]) -> list[tuple[int, ...] | None]:
    """Torque's slot numbers per host (`n1/0-1+n2/0+n1/3`); None for a host written
    without them or PBS-style (`n1/0*2`: a chunk index, not CPUs)."""
    ids: dict[int, set[int]] = {}
    plain = [True] * len(nodes)
    for part in text.strip().split("+") if text.strip() else []:
        host, sep, spec = part.strip().partition("/")
        index = _short_index(host, nodes)
        if not sep or "*" in spec:
            plain[index] = False
            continue
        ids.setdefault(index, set()).update(expand_id_ranges(spec))
    return [tuple(sorted(ids[i])) if plain[i] and i in ids else None
            for i in range(len(nodes))]


# --- OpenPBS -------------------------------------------------------------------------------

def openpbs(attrs: Mapping[str, str], nodes: Sequence[str], slots: Sequence[int]
            ) -> tuple[NodeAllocation, ...]:
    if not nodes:
        return ()
    text = attrs.get("exec_vnode", "").strip()
    if not text:
        return tuple(NodeAllocation(cpus=s, cpus_from="exec_host") for s in slots)
    chunks = _exec_vnode(text)
    hosts = [p.strip().partition("/")[0] for p in attrs.get("exec_host", "").split("+")
             if p.strip()]
    cpus = [0] * len(nodes)
    memory: list[int | None] = [0] * len(nodes)
    seen = [False] * len(nodes)
    for number, chunk in enumerate(chunks):
        for vnode, resources in chunk:
            host = hosts[number] if len(hosts) == len(chunks) else vnode.split("[", 1)[0]
            index = _short_index(host, nodes)
            seen[index] = True
            cpus[index] += int(resources.get("ncpus", "0"))
            if "mem" in resources and memory[index] is not None:
                memory[index] += parse_pbs_size_bytes(resources["mem"])
            else:
                memory[index] = None
    if not all(seen):
        missing = [n for n, s in zip(nodes, seen, strict=True) if not s]
        raise ValueError(f"exec_vnode puts nothing on {one_line(', '.join(missing), 80)}")
    return tuple(NodeAllocation(cpus=cpus[i],
                                memory_mib=None if memory[i] is None else memory[i] >> _MIB,
                                cpus_from="exec_vnode",
                                memory_from="exec_vnode" if memory[i] is not None else "")
                 for i in range(len(nodes)))


def _exec_vnode(text: str) -> list[list[tuple[str, dict[str, str]]]]:
    """`(n1:ncpus=2:mem=4gb+n1[1]:ncpus=2)+(n2:ncpus=1)` -> per chunk, its vnode parts."""
    chunks = []
    for chunk in _split_chunks(text):
        parts = []
        for part in chunk.split("+"):
            name, *pairs = part.strip().split(":")
            if not _VNODE.fullmatch(name):
                raise ValueError(f"exec_vnode names {one_line(name, 60)!r}, not a vnode")
            resources: dict[str, str] = {}
            for pair in pairs:
                key, eq, value = pair.partition("=")
                if not eq or key in resources:
                    raise ValueError(f"cannot read exec_vnode part {one_line(part, 60)!r}")
                resources[key] = value.strip()
            if "ncpus" in resources and not _NCPUS.fullmatch(resources["ncpus"]):
                raise ValueError(f"cannot read ncpus in {one_line(part, 60)!r}")
            parts.append((name, resources))
        chunks.append(parts)
    return chunks


def _split_chunks(text: str) -> list[str]:
    """`(a)+(b+c)` -> ["a", "b+c"]; ValueError unless every chunk is parenthesised."""
    chunks = []
    rest = text
    while rest:
        if not rest.startswith("(") or ")" not in rest:
            raise ValueError(f"cannot read exec_vnode {one_line(text, 80)!r}")
        inner, _, rest = rest[1:].partition(")")
        if "(" in inner or not inner.strip():
            raise ValueError(f"cannot read exec_vnode {one_line(text, 80)!r}")
        chunks.append(inner)
        if rest.startswith("+"):
            rest = rest[1:]
            if not rest:
                raise ValueError(f"cannot read exec_vnode {one_line(text, 80)!r}")
        elif rest:
            raise ValueError(f"cannot read exec_vnode {one_line(text, 80)!r}")
    return chunks


# --- Slurm ---------------------------------------------------------------------------------

def slurm_details(details: Sequence[Mapping[str, str]], hosts: Sequence[str]
                  ) -> dict[str, NodeAllocation]:
    """The `-d` detail lines (each already expanded to its `hosts`, in the same order)."""
    out: dict[str, NodeAllocation] = {}
    for detail, names in zip(details, hosts, strict=True):
        cores = expand_id_ranges(detail.get("CPU_IDs", ""))
        mem_text = detail.get("Mem", "").strip()
        memory = parse_slurm_size_mib(mem_text) if mem_text else 0
        for host in names:
            out[host] = NodeAllocation(
                cpus=len(cores), memory_mib=memory or None, cores=cores,
                cpus_from="CPU_IDs", memory_from="Mem" if memory else "",
                cores_from="CPU_IDs")
    return out


def slurm_fallback(fields: Mapping[str, str], slots: Sequence[int]
                   ) -> tuple[NodeAllocation, ...]:
    """Without detail lines: the CPUs as the record spreads them and its memory fields."""
    per_node = fields.get("MinMemoryNode", "").strip()
    per_cpu = fields.get("MinMemoryCPU", "").strip()
    out = []
    for cpus in slots:
        memory, source = None, ""
        if per_node:
            memory, source = parse_slurm_size_mib(per_node) or None, "MinMemoryNode"
        elif per_cpu:
            memory, source = (parse_slurm_size_mib(per_cpu) * cpus) or None, "MinMemoryCPU"
        out.append(NodeAllocation(cpus=cpus, memory_mib=memory, cpus_from="NumCPUs",
                                  memory_from=source if memory else ""))
    return tuple(out)
