"""Slurm's job records parsed: `scontrol show job -dd` text (Slurm 22.05, Debian 12, has
no `--json`) and JSON (`scontrol --json` from 23.02, squeue, slurmrestd), and the VM
request in the job's comment. Pure functions.

The text format is not escaped
------------------------------
scontrol prints user-controlled text (job name, comment, paths, mail user) as it is, so a
job name holding a line break and "   UserId=root(0)" forges a line (tests/data/
slurm-22.05-show-job-forged-lines.txt is a real capture). The parser therefore treats the
record as ambiguous when a key appears twice, a line is not indented as scontrol indents,
a token is not key=value, or a node appears twice. For a job that carries the vtorque
marker that is a RecordError (a UserError: the job is refused, the node stays in
service); a job without the marker is read leniently (first value wins), since nothing of
it is acted upon.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from vtorque.batch.base import JobContext, check_user_name, load_json
from vtorque.batch.hostlist import count_ids, expand_hostlist
from vtorque.errors import NodeError, RecordError
from vtorque.text import one_line

COMMENT_MARKER = "vtorque:"

# Keys whose value is the rest of their line in `scontrol show job` (free text the user
# may control: spaces are part of the value). Slurm 22.05's job_info.c prints each of
# these alone on its line.
_WHOLE_LINE_KEYS = ("Command", "WorkDir", "AdminComment", "SystemComment", "Comment",
                    "StdErr", "StdIn", "StdOut", "Container", "SELinuxContext",
                    "BurstBuffer", "BurstBufferState")
_OWNER = re.compile(r"(.*)\(([0-9]{1,10})\)")
_NUMBER = re.compile(r"[0-9]{1,9}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}")
# scontrol separates tokens by spaces and lines by '\n' only: other characters that
# Python's str.split()/splitlines() would cut at (\x1c-\x1f, \x85, \u2028, ...) belong to
# the value a user gave, never to the record's structure.
_SPACES = re.compile(r" +")
_ONE_LINE = "one-line output (scontrol -o) cannot be split unambiguously"
_KEY = re.compile(r"[A-Z][A-Za-z0-9_/:]*")
_NULL = ("", "(null)", "N/A", "None")


@dataclass(frozen=True)
class SlurmJob:
    """One job as scontrol printed it: the neutral context plus what only Slurm has."""
    ctx: JobContext
    fields: Mapping[str, str] = field(default_factory=dict)   # first value of every key
    comment: str | None = None
    admin_comment: str | None = None
    batch_host: str | None = None



# --- the request in the comment ------------------------------------------------------------

def comment_for_request(encoded: str, user_comment: str | None = None) -> str:
    """The comment vsub submits: marker, encoded request, and the user's own comment."""
    text = COMMENT_MARKER + encoded
    if user_comment:
        text += " " + user_comment
    return text


def request_from_comment(comment: str | None) -> str | None:
    """The encoded request a comment carries; None when it carries no marker.

    RecordError when the marker is there but no request follows it directly."""
    if comment is None or not comment.startswith(COMMENT_MARKER):
        return None
    rest = comment[len(COMMENT_MARKER):]
    token = re.split(r"[ \t\r\n]", rest, maxsplit=1)[0]
    if not token:
        raise RecordError(f"the job comment starts with {COMMENT_MARKER!r} but no VM "
                          "request follows it (submit VM jobs with vsub)")
    return token


# --- `scontrol show job` text --------------------------------------------------------------

@dataclass
class _Record:
    lines: list[str]
    values: dict[str, list[str]] = field(default_factory=dict)
    details: list[dict[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, value: str) -> None:
        self.values.setdefault(key, []).append(value)

    def first(self, key: str) -> str | None:
        values = self.values.get(key)
        return values[0] if values else None


def _split_records(text: str) -> list[_Record]:
    records: list[_Record] = []
    stray: list[str] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if line.startswith("JobId="):
            records.append(_Record([line]))
        elif records:
            records[-1].lines.append(line)
        elif line.strip():
            stray.append(line)
    if stray and not records:
        raise NodeError("slurm: scontrol printed no job record: "
                        + one_line(stray[0], 120))
    return records


def _tokens(text: str, record: _Record, where: str) -> list[tuple[str, str]]:
    out = []
    for token in _words(text):
        key, eq, value = token.partition("=")
        if not eq or not key:
            record.problems.append(f"{where}: {one_line(token, 40)!r} is not key=value")
            continue
        out.append((key, value))
    return out


def _words(text: str) -> list[str]:
    return [word for word in _SPACES.split(text) if word]


def _is_one_liner(record: _Record) -> bool:
    """`scontrol show job -o`: the whole record on one line (never used by the adapter;
    read for completeness, and never trusted for a VM job: its free text is ambiguous)."""
    rest = [line for line in record.lines[1:] if line.strip()]
    return not rest and " UserId=" in record.lines[0].partition(" JobName=")[2]


def _parse_one_liner(record: _Record) -> None:
    key = None
    for token in _words(record.lines[0]):
        name, eq, value = token.partition("=")
        if eq and _KEY.fullmatch(name):
            key = name
            record.add(key, value)
        elif key is not None:
            values = record.values[key]
            values[-1] = f"{values[-1]} {token}"
    record.problems.append(_ONE_LINE)


def _parse_record(record: _Record) -> None:
    if _is_one_liner(record):
        _parse_one_liner(record)
        return
    first = record.lines[0]
    head, sep, name = first.partition(" JobName=")
    for key, value in _tokens(head, record, "line 1"):
        record.add(key, value)
    if sep:
        record.add("JobName", name.rstrip())
    for number, line in enumerate(record.lines[1:], start=2):
        where = f"line {number}"
        if not line.strip():
            continue
        if line.startswith("     Nodes="):
            detail = dict(_tokens(line, record, where))
            record.details.append(detail)
            continue
        if not line.startswith("   ") or line.startswith("    "):
            record.problems.append(f"{where} is not indented as scontrol indents "
                                   f"({one_line(line, 40)!r})")
            continue
        content = line[3:]
        key = content.split("=", 1)[0]
        if key in _WHOLE_LINE_KEYS and "=" in content:
            record.add(key, content.split("=", 1)[1].rstrip())
            continue
        for key, value in _tokens(content, record, where):
            record.add(key, value)
    for key, values in record.values.items():
        if len(values) > 1:
            record.problems.append(f"{key}= appears {len(values)} times")


def parse_show_job(text: str, job_id: str) -> SlurmJob:
    """`scontrol show job [-d[d]] ID` output (text, or JSON) -> the SlurmJob of `job_id`.

    NodeError when the text holds no record of the job or misses what every record has;
    RecordError (UserError) when a record that carries the vtorque marker is ambiguous.
    """
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = load_json(stripped)
        except (ValueError, RecursionError) as exc:
            raise NodeError(f"slurm: scontrol printed broken JSON for job {job_id}: "
                            f"{one_line(exc, 120)}") from None
        from vtorque.batch.slurm_json import parse_json_job
        return parse_json_job(data, job_id)
    records = _split_records(text)
    for record in records:
        _parse_record(record)
    mine = [r for r in records if r.first("JobId") == job_id]
    if not mine:
        array = [r for r in records
                 if f"{r.first('ArrayJobId')}_{r.first('ArrayTaskId')}" == job_id]
        mine = array
    if not mine:
        held = one_line(", ".join(r.first("JobId") or "?" for r in records) or "no jobs", 200)
        raise NodeError(f"slurm: scontrol output does not hold job {job_id} (it holds: "
                        f"{held})")
    record = mine[0]
    # Strict reading for a job that claims to be a VM job: any Comment value (a forged
    # one included) that carries the marker.
    marked = any(value.startswith(COMMENT_MARKER)
                 for r in mine for value in r.values.get("Comment", []))
    if len(mine) > 1:
        record.problems.append(f"{len(mine)} records claim job id {job_id}")
    return _job_from_record(record, job_id, strict=marked)


def _job_from_record(record: _Record, job_id: str, *, strict: bool) -> SlurmJob:
    """The record as a SlurmJob. Strict (a VM job): every problem is an error. Lenient (no
    marker: nothing of the job is acted upon, and a node must never fail for it): first
    values, and what cannot be read stays empty."""
    fields = {key: values[0] for key, values in record.values.items()}
    try:
        nodes = _nodes(fields.get("NodeList", ""), record)
    except NodeError:
        if strict:
            raise
        nodes = []
    slots = _slots(nodes, record, fields)
    batch_host = _value(fields.get("BatchHost"))
    nodes, slots = _batch_host_first(nodes, slots, batch_host)
    allocations = _allocations(record, nodes, slots, fields)
    if strict and record.problems:
        raise RecordError(f"the record of job {job_id} is ambiguous: "
                          + "; ".join(record.problems[:3])
                          + " (a job name, comment or path with a line break?)")
    comment = _value(fields.get("Comment"), keep_na=True)
    vm_request = request_from_comment(comment) if strict else None
    user = _owner(fields.get("UserId"))
    if user is None and strict:
        # slurmctld could not name the owner (e.g. UserId=(null)(1234)): not this node's
        # fault, and no guests can be made for nobody.
        raise RecordError(f"slurmctld shows no usable owner for job {job_id} "
                          f"(UserId={one_line(repr(fields.get('UserId')), 60)})")
    group = _owner(fields.get("GroupId"))
    state = _value(fields.get("JobState"))
    restarts = fields.get("Restarts", "0")
    if strict and state is None:
        raise NodeError(f"slurm: the record of job {job_id} has no JobState")
    if not _NUMBER.fullmatch(restarts):
        if strict:
            raise NodeError(f"slurm: job {job_id} has an unreadable "
                            f"Restarts={one_line(repr(restarts), 40)}")
        restarts = "0"
    if not strict and any(p != _ONE_LINE for p in record.problems):
        state = None        # an ambiguous record decides nothing, not even "it has ended"
    ctx = JobContext(
        scheduler="slurm", job_id=job_id, user=user or "", group=group,
        job_name=fields.get("JobName", ""), queue=_value(fields.get("Partition")),
        nodes=tuple(nodes), slots=tuple(slots), vm_request=vm_request,
        workdir=_value(fields.get("WorkDir")), run_count=int(restarts) + 1,
        variables={}, state=state,
        admin_note=_value(fields.get("AdminComment"), keep_na=True),
        uid=_uid(fields.get("UserId")), created=parse_time(fields.get("SubmitTime")),
        allocations=allocations)
    return SlurmJob(ctx, fields, comment=comment, admin_comment=ctx.admin_note,
                    batch_host=batch_host)


def _value(text: str | None, keep_na: bool = False) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if not text or text == "(null)" or (not keep_na and text in _NULL):
        return None
    return text


def _uid(text: str | None) -> int | None:
    """`alice(1001)` -> 1001."""
    match = _OWNER.fullmatch((text or "").strip())
    return int(match.group(2)) if match else None


def parse_time(text: str | None) -> int | None:
    """`2026-11-24T03:48:56` (scontrol runs with TZ=UTC) -> epoch seconds; None when
    absent or not a time."""
    text = (text or "").strip()
    if not _TIME.fullmatch(text):
        return None
    import calendar
    import time
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _owner(text: str | None) -> str | None:
    """`alice(1001)` -> alice; None when there is no usable name."""
    match = _OWNER.fullmatch((text or "").strip())
    name = match.group(1) if match else ""
    if not check_user_name(name) or name == "(null)":
        return None
    return name


def _nodes(text: str, record: _Record) -> list[str]:
    text = text.strip()
    if text in _NULL:
        return []
    nodes = expand_hostlist(text)
    if len(set(nodes)) != len(nodes):
        record.problems.append("NodeList names a node twice")
        nodes = list(dict.fromkeys(nodes))
    return nodes


def _slots(nodes: list[str], record: _Record, fields: Mapping[str, str]) -> list[int]:
    """CPUs per node: the -d detail lines (Nodes=... CPU_IDs=...), else NumCPUs spread
    over the nodes (the first nodes take the remainder)."""
    per_node: dict[str, int] = {}
    for detail in record.details:
        try:
            hosts = expand_hostlist(detail.get("Nodes", ""))
            count = count_ids(detail.get("CPU_IDs", ""))
        except NodeError as exc:
            record.problems.append(str(exc))
            continue
        for host in hosts:
            if host in per_node or host not in nodes:
                record.problems.append(f"detail line for node {host} is duplicated or "
                                       "outside NodeList")
                continue
            per_node[host] = count
    if nodes and set(per_node) == set(nodes):
        return [per_node[n] for n in nodes]
    if per_node:
        record.problems.append("detail lines do not cover NodeList")
    total_text = fields.get("NumCPUs", "")
    if not nodes:
        return []
    total = int(total_text) if _NUMBER.fullmatch(total_text) else len(nodes)
    base, extra = divmod(max(total, len(nodes)), len(nodes))
    return [base + (1 if i < extra else 0) for i in range(len(nodes))]


def _allocations(record: _Record, nodes: list[str], slots: list[int],
                 fields: Mapping[str, str]) -> tuple:
    """What the job holds on each node (batch/allocation.py); an unreadable allocation is
    one more problem of the record (for a VM job: refused)."""
    from vtorque.batch import allocation
    try:
        hosts = [expand_hostlist(d.get("Nodes", "")) for d in record.details]
        by_host = allocation.slurm_details(record.details, hosts)
        if nodes and set(nodes) <= set(by_host):
            return tuple(by_host[n] for n in nodes)
        return allocation.slurm_fallback(fields, slots)
    except (ValueError, NodeError) as exc:
        record.problems.append(f"unreadable allocation: {one_line(exc, 100)}")
        return ()


def _batch_host_first(nodes: list[str], slots: list[int], batch_host: str | None
                      ) -> tuple[list[str], list[int]]:
    """The batch script runs on BatchHost, so it is the mother superior (index 0). Slurm
    makes it the first node of NodeList; should it ever not be, every node still agrees,
    because every node reorders the same record the same way."""
    if batch_host and batch_host in nodes and nodes[0] != batch_host:
        at = nodes.index(batch_host)
        nodes = [nodes[at]] + nodes[:at] + nodes[at + 1:]
        slots = [slots[at]] + slots[:at] + slots[at + 1:]
    return nodes, slots
