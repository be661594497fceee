"""Slurm's job records as JSON (`scontrol --json` from 23.02 on, squeue --json,
slurmrestd): the same SlurmJob as the text parser gives. Pure functions."""

from __future__ import annotations

from collections.abc import Mapping

from vtorque.batch.base import JobContext, repeated
from vtorque.batch.hostlist import expand_hostlist
from vtorque.batch.slurm_record import (
    SlurmJob,
    _batch_host_first,
    _owner,
    request_from_comment,
)
from vtorque.errors import NodeError, RecordError
from vtorque.text import one_line


def _number(value) -> int | None:
    """22.05 prints plain numbers; 23.02+ {"set": bool, "infinite": bool, "number": n}."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_json_job(data, job_id: str) -> SlurmJob:
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list):
        raise NodeError(f"slurm: the JSON for job {job_id} has no 'jobs' list")
    mine = [j for j in jobs if isinstance(j, dict) and str(_number(j.get("job_id"))) == job_id]
    if not mine:
        mine = [j for j in jobs if isinstance(j, dict) and
                f"{_number(j.get('array_job_id'))}_{_number(j.get('array_task_id'))}"
                == job_id]
    if len(mine) != 1:
        raise NodeError(f"slurm: the JSON holds {len(mine)} records of job {job_id}")
    job = mine[0]
    comment = job.get("comment") or None
    vm_request = request_from_comment(comment if isinstance(comment, str) else None)
    strict = vm_request is not None           # as for the text: lenient without the marker
    twice = sorted(repeated(job) | repeated(data))
    if twice and strict:
        raise RecordError(f"the slurm record of job {job_id} is ambiguous: key "
                          f"{one_line(twice[0], 60)!r} appears more than once")
    user = _owner(f"{job.get('user_name') or ''}(0)")
    if user is None and strict:
        raise RecordError(f"slurmctld shows no usable owner for job {job_id} "
                          f"(user_name={one_line(repr(job.get('user_name')), 60)})")
    group = _owner(f"{job.get('group_name') or ''}(0)")
    state = job.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else None
    if not isinstance(state, str) or not state:
        if strict:
            raise NodeError(f"slurm: job {job_id} has no job_state")
        state = None
    if twice:
        state = None        # an ambiguous record decides nothing, not even "it has ended"
    try:
        nodes = expand_hostlist(str(job.get("nodes") or ""))
        if len(set(nodes)) != len(nodes):
            raise NodeError(f"slurm: job {job_id}: nodes names a node twice")
    except NodeError:
        if strict:
            raise
        nodes = []
    slots = _json_slots(job, nodes)
    batch_host = job.get("batch_host") or None
    nodes, slots = _batch_host_first(nodes, slots, batch_host)
    allocations = _json_allocations(job, nodes, slots)
    restarts = _number(job.get("restart_cnt")) or 0
    ctx = JobContext(
        scheduler="slurm", job_id=job_id, user=user or "", group=group,
        job_name=str(job.get("name") or ""), queue=job.get("partition") or None,
        nodes=tuple(nodes), slots=tuple(slots), vm_request=vm_request,
        workdir=job.get("current_working_directory") or None, run_count=restarts + 1,
        variables={}, state=state, admin_note=job.get("admin_comment") or None,
        uid=_number(job.get("user_id")), created=_number(job.get("submit_time")),
        allocations=allocations)
    return SlurmJob(ctx, {}, comment=comment, admin_comment=ctx.admin_note,
                    batch_host=batch_host)


def _json_slots(job: Mapping, nodes: list[str]) -> list[int]:
    per_node: dict[str, int] = {}
    for entry in _node_entries(job):
        name = entry.get("nodename") or entry.get("name")
        cpus = entry.get("cpus")
        count = _number(cpus.get("count")) if isinstance(cpus, dict) else _number(cpus)
        if count is None:
            count = _number(entry.get("cpus_used"))
        if isinstance(name, str) and count:
            per_node[name] = count
    if nodes and set(per_node) == set(nodes):
        return [per_node[n] for n in nodes]
    if not nodes:
        return []
    total = _number(job.get("cpus")) or len(nodes)
    base, extra = divmod(max(total, len(nodes)), len(nodes))
    return [base + (1 if i < extra else 0) for i in range(len(nodes))]


def _node_entries(job: Mapping) -> list[Mapping]:
    resources = job.get("job_resources")
    if not isinstance(resources, dict):
        return []
    allocated = resources.get("allocated_nodes")            # v0.0.38 .. v0.0.40
    if isinstance(resources.get("nodes"), dict):             # v0.0.41 +
        allocated = resources["nodes"].get("allocation")
    return [e for e in allocated if isinstance(e, dict)] if isinstance(allocated, list) else []


def _json_allocations(job: Mapping, nodes: list[str], slots: list[int]) -> tuple:
    """What the job holds per node: the CPUs as _json_slots counts them, the memory the
    node entries name (memory_allocated, or memory as a number or {"allocated": n}), else
    memory_per_node or memory_per_cpu of the job; MiB, 0 meaning unbounded. The JSON
    names sockets and cores, not CPU ids: no `cores`."""
    from vtorque.batch.allocation import NodeAllocation
    memory: dict[str, int | None] = {}
    for entry in _node_entries(job):
        name = entry.get("nodename") or entry.get("name")
        value = entry.get("memory_allocated", entry.get("memory"))
        if isinstance(value, dict) and "allocated" in value:
            value = value["allocated"]
        if isinstance(name, str):
            memory[name] = _number(value)
    per_node, per_cpu = _number(job.get("memory_per_node")), _number(job.get("memory_per_cpu"))
    out = []
    for node, cpus in zip(nodes, slots, strict=True):
        mib, source = memory.get(node), "job_resources"
        if mib is None and per_node:
            mib, source = per_node, "memory_per_node"
        elif mib is None and per_cpu:
            mib, source = per_cpu * cpus, "memory_per_cpu"
        out.append(NodeAllocation(cpus=cpus, memory_mib=mib or None, cpus_from="job_resources",
                                  memory_from=source if mib else ""))
    return tuple(out)
