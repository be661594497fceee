"""What Torque and OpenPBS share: the attribute names of a job record, exec_host and
Variable_List, and how such a record becomes the neutral JobContext. The adapters
(torque.py reads XML, openpbs.py JSON) only turn their output into flat attributes."""

from __future__ import annotations

from collections.abc import Mapping

from vtorque.batch.base import JobContext, check_node_name, check_user_name, count_id_ranges
from vtorque.errors import NodeError
from vtorque.request import JOB_VARIABLE
from vtorque.text import one_line


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
        if index.isdigit() and ncpus.isdigit() and len(ncpus) <= 9:
            return int(ncpus)
        raise NodeError(f"{scheduler}: cannot read exec_host part {part!r}")
    try:
        return count_id_ranges(spec)
    except ValueError as exc:
        what = "descending slot range in" if "descending" in str(exc) else "cannot read"
        raise NodeError(f"{scheduler}: {what} exec_host part {part!r}") from None


def parse_variable_list(text: str) -> dict[str, str]:
    """Torque's Variable_List `K=V,K=V` -> dict.

    Torque stores a ',' inside a value as `\\,`; that becomes ','. A backslash before any
    other character is kept. An item without '=' continues the previous value (an
    unescaped comma, as older servers stored them). Whitespace around the whole list
    (pretty-printed XML) is dropped; a repeated name keeps its last value, as the job's
    environment would.
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
    last: str | None = None
    for item in items:
        if "=" in item:
            key, value = item.split("=", 1)
            key = key.strip()
            if key:
                out[key] = value
                last = key
                continue
        if last is not None:
            out[last] += "," + item
        elif item.strip():
            out[item.strip()] = ""
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
    if not count_text.isdigit() or len(count_text) > 9:
        raise NodeError(f"{scheduler}: job {job_id} has an unreadable run_count "
                        f"{count_text!r}")
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
    )
