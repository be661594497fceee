"""What Torque and OpenPBS share: the attribute names of a job record, exec_host and
Variable_List, and how such a record becomes the neutral JobContext. The adapters
(torque.py reads XML, openpbs.py JSON) only turn their output into flat attributes."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from vtorque.batch.base import JobContext, check_node_name, check_user_name, count_id_ranges
from vtorque.errors import NodeError, RecordError
from vtorque.request import JOB_VARIABLE
from vtorque.text import one_line

# Attributes that decide anything: who owns the job, where it runs with what, what it
# asks for, its state and history. One of them twice in a record means text the user
# controls broke the record's structure; "the last one wins" would let a forged copy
# decide (a second exec_host put guests on another node), so the job is refused.
DECIDING = frozenset({
    "Job_Id", "Job_Owner", "euser", "egroup", "exec_host", "exec_vnode", "Variable_List",
    "comment", "Account_Name", "project", "job_state", "run_count", "start_count",
    "init_work_dir", "ctime", "queue", "Job_Name", "Resource_List", "schedselect",
})
DECIDING_PREFIXES = ("Resource_List.",)
# Variables of Variable_List that decide anything on the root side.
DECIDING_VARIABLES = frozenset({JOB_VARIABLE, "PBS_O_WORKDIR"})
_NUMBER = re.compile(r"[0-9]{1,9}")
_EPOCH = re.compile(r"[0-9]{1,12}")
_PBS_TIME = "%a %b %d %H:%M:%S %Y"


def deciding(name: str) -> bool:
    return name in DECIDING or name.startswith(DECIDING_PREFIXES)


def refuse_repeated(scheduler: str, job_id: str, names: Iterable[str],
                    where: str = "attribute") -> None:
    """RecordError when any of `names` (repeated in the record) decides anything."""
    bad = sorted(n for n in names if (deciding(n) if where == "attribute"
                                      else n in DECIDING_VARIABLES))
    if bad:
        raise RecordError(f"the {scheduler} record of job {job_id} is ambiguous: "
                          f"{where} {one_line(bad[0], 60)} appears more than once "
                          "(forged by text in a job attribute?)")


def parse_ctime(text: str | None) -> int | None:
    """The server's creation time of a job: Torque prints epoch seconds, OpenPBS a date
    (in UTC: the adapters run qstat with TZ=UTC). None when absent or unreadable."""
    text = (text or "").strip()
    if _EPOCH.fullmatch(text):
        return int(text)
    if not text.isascii():
        return None
    import calendar
    import time
    try:
        return calendar.timegm(time.strptime(" ".join(text.split()), _PBS_TIME))
    except (ValueError, OverflowError):
        return None


def parse_exec_host(text: str, scheduler: str = "torque") -> tuple[tuple[str, ...],
                                                                   tuple[int, ...]]:
    """`host1/0-1+host2/2+host1/3` -> (("host1", "host2"), (3, 1)).

    Hosts in order of first appearance, slots summed per host. The part after '/' is a
    Torque slot list (`0-3,5` = 5 slots) or a PBS `index*ncpus` (`0*2` = 2 slots); a host
    without '/' counts one slot. Anything else is a NodeError (the server printed
    something we do not understand, so we must not guess the allocation).
    """
    slots: dict[str, int] = {}
    text = text.strip()
    if not text:
        return (), ()
    for part in text.split("+"):
        host, sep, spec = part.strip().partition("/")
        check_node_name(host, scheduler)
        count = _count_slots(spec, part, scheduler) if sep else 1
        slots[host] = slots.get(host, 0) + count
    return tuple(slots), tuple(slots.values())


def _count_slots(spec: str, part: str, scheduler: str) -> int:
    spec = spec.strip()
    if "*" in spec:                      # PBS: <index>*<ncpus>
        index, _, ncpus = spec.partition("*")
        if _NUMBER.fullmatch(index) and _NUMBER.fullmatch(ncpus):
            return int(ncpus)
        raise NodeError(f"{scheduler}: cannot read exec_host part {one_line(part, 60)!r}")
    try:
        return count_id_ranges(spec)
    except ValueError as exc:
        what = "descending slot range in" if "descending" in str(exc) else "cannot read"
        raise NodeError(f"{scheduler}: {what} exec_host part {one_line(part, 60)!r}"
                        ) from None


def parse_variable_list(text: str, scheduler: str = "torque", job_id: str = "?"
                        ) -> dict[str, str]:
    """Torque's Variable_List `K=V,K=V` -> dict.

    Torque stores a ',' inside a value as `\\,`; that becomes ','. A backslash before any
    other character is kept. An item without '=' continues the previous value (an
    unescaped comma, as older servers stored them). Whitespace around the whole list
    (pretty-printed XML) is dropped; a repeated name keeps its last value, as the job's
    environment would, except that a repeated variable the root side decides on (the VM
    request, the working directory) is a RecordError.
    """
    items: list[str] = []
    buf: list[str] = []
    text = text.strip()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            buf.append(",")
            i += 2
            continue
        if ch == ",":
            items.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    items.append("".join(buf))
    out: dict[str, str] = {}
    seen: set[str] = set()
    last: str | None = None
    for item in items:
        if "=" in item:
            key, value = item.split("=", 1)
            key = key.strip()
            if key:
                if key in out:
                    seen.add(key)
                out[key] = value
                last = key
                continue
        if last is not None:
            out[last] += "," + item
        elif item.strip():
            out[item.strip()] = ""
    refuse_repeated(scheduler, job_id, seen, "variable")
    return out


def context_from_attrs(scheduler: str, job_id: str, attrs: Mapping[str, str],
                       variables: Mapping[str, str]) -> JobContext:
    """Map PBS-family job attributes (Torque and OpenPBS share the names) to a JobContext.

    `attrs` is flat: `Job_Name`, `exec_host`, `Resource_List.nodes`, ...; `variables` is
    the parsed Variable_List. job_id stays the caller's id, so every node and the epilogue
    key the job's state by the same string.
    """
    owner = attrs.get("Job_Owner", "").strip()
    user = attrs.get("euser", "").strip() or owner.split("@", 1)[0].strip()
    if not check_user_name(user):
        raise NodeError(f"{scheduler}: job {job_id} has no usable owner "
                        f"(euser={one_line(repr(attrs.get('euser')), 60)}, "
                        f"Job_Owner={one_line(repr(owner), 60)})")
    group = attrs.get("egroup", "").strip() or None
    if group is not None and not check_user_name(group):
        raise NodeError(f"{scheduler}: job {job_id} has an unusable group "
                        f"{one_line(repr(group), 60)}")
    nodes, slots = parse_exec_host(attrs.get("exec_host", ""), scheduler)
    vm = variables.get(JOB_VARIABLE, "").strip() or None
    workdir = (variables.get("PBS_O_WORKDIR", "").strip()
               or attrs.get("init_work_dir", "").strip() or None)
    # Torque shows run_count only to managers; start_count (same meaning: times the job
    # was started) is visible to everyone. OpenPBS has run_count only.
    count_text = (attrs.get("run_count") or attrs.get("start_count") or "0").strip()
    if not _NUMBER.fullmatch(count_text):
        raise NodeError(f"{scheduler}: job {job_id} has an unreadable run_count "
                        f"{one_line(count_text, 40)!r}")
    allocations = _allocations(scheduler, job_id, attrs, nodes, slots, strict=vm is not None)
    return JobContext(
        scheduler=scheduler,
        job_id=job_id,
        user=user,
        group=group,
        job_name=attrs.get("Job_Name", "").strip(),
        queue=attrs.get("queue", "").strip() or None,
        nodes=nodes,
        slots=slots,
        vm_request=vm,
        workdir=workdir,
        run_count=int(count_text),
        variables=dict(variables),
        state=attrs.get("job_state", "").strip() or None,
        created=parse_ctime(attrs.get("ctime")),
        allocations=allocations,
    )


def _allocations(scheduler: str, job_id: str, attrs: Mapping[str, str],
                 nodes: tuple[str, ...], slots: tuple[int, ...], *, strict: bool) -> tuple:
    """What the job holds on each node (batch/allocation.py). Unreadable: for a VM job the
    server printed what we do not understand (NodeError, as for exec_host); for any other
    job nothing is decided from it."""
    from vtorque.batch import allocation
    read = allocation.torque if scheduler == "torque" else allocation.openpbs
    try:
        return read(attrs, nodes, slots)
    except (ValueError, NodeError) as exc:
        if strict:
            raise NodeError(f"{scheduler}: cannot read what job {job_id} was allocated: "
                            f"{one_line(exc, 160)}") from None
        return ()
