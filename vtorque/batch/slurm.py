"""Slurm: read a job back from slurmctld, take a node out of service, act on a job.

The job comes from `scontrol show job -dd ID` (Slurm 22.05, Debian 12, has no `--json`;
the text is parsed, and output that is JSON, as newer Slurm prints with `--json` or a site
wrapper might, is parsed as JSON). Parsing is pure (parse_show_job, expand_hostlist,
request_from_comment) so the tests cover it without subprocesses.
Reference: /work/shared/reference/torque-contract.md (Slurm), samples/slurm-scontrol-*,
and tests/data/slurm-22.05-* (captured from Slurm 22.05.8 on this kind of machine).

The VM request travels in the job's Comment
-----------------------------------------------
`scontrol show job` does not show a job's environment, so the request cannot travel as a
job variable as it does with Torque. vsub puts it into the comment:

    --comment='vtorque:img=deb12;vcpus=2'            (request.encode_pairs after the marker)
    --comment='vtorque:img=deb12;vcpus=2 my own words' (a comment of the user's kept after
                                                        one space)

The root side reads the text after `vtorque:` up to the first white space and ignores the
rest. Why the comment: every Slurm version prints it (`Comment=`), sbatch takes it as is,
it touches neither scheduling nor accounting, and slurmd hands it to the Prolog as
SLURM_JOB_COMMENT (which makes a fast path possible). The owner can change it while the
job waits (`scontrol update jobid=N comment=...`), exactly as qalter can change Torque's
VTORQUE_VM: every node re-validates it against the site's config and image catalog, so an
altered request is as safe as a submitted one. `--extra` exists only from 23.02 on (in
22.05 `--extra` is an abbreviation of `--extra-node-info`), and `--constraint` or
`--licenses` would steer the scheduler and need site configuration.

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

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vtorque import proc
from vtorque.batch.base import (
    BatchSystem,
    JobContext,
    UnknownJobError,
    check_job_id,
    check_node_name,
    count_id_ranges,
    node_note,
    register,
)
from vtorque.errors import CommandError, NodeError, UserError

COMMENT_MARKER = "vtorque:"
NOTE_MAX = 400                      # AdminComment we write (a job note, not a node note)
HOSTLIST_MAX = 65536                # more hosts than any allocation: a broken expression

# Keys whose value is the rest of their line in `scontrol show job` (free text the user
# may control: spaces are part of the value). Source: src/api/job_info.c (22.05), which
# prints each of these alone on its line.
_WHOLE_LINE_KEYS = ("Command", "WorkDir", "AdminComment", "SystemComment", "Comment",
                    "StdErr", "StdIn", "StdOut", "Container", "SELinuxContext",
                    "BurstBuffer", "BurstBufferState")
_USER = re.compile(r"[A-Za-z0-9_][^\s/:\x00-\x1f\x7f]{0,255}")
_OWNER = re.compile(r"(.*)\((\d{1,10})\)")
_KEY = re.compile(r"[A-Z][A-Za-z0-9_/:]*")
_RANGE = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NULL = ("", "(null)", "N/A", "None")


class RecordError(UserError):
    """A VM job's record cannot be read unambiguously (user-controlled text forged or
    broke its lines). A UserError: the job is refused and the node stays in service."""


@dataclass(frozen=True)
class SlurmJob:
    """One job as scontrol printed it: the neutral context plus what only Slurm has."""
    ctx: JobContext
    fields: Mapping[str, str] = field(default_factory=dict)   # first value of every key
    comment: str | None = None
    admin_comment: str | None = None
    batch_host: str | None = None


# --- host lists --------------------------------------------------------------------------

def expand_hostlist(text: str, limit: int = HOSTLIST_MAX) -> list[str]:
    """A Slurm host list -> host names, in Slurm's order (as `scontrol show hostnames`).

    `n[1-3,5],gpu[01-02]` -> n1 n2 n3 n5 gpu01 gpu02. Expressions are separated by commas
    or white space outside brackets; a range keeps the width of its lower bound
    (`n[098-102]`, `n[01-3]` -> n01 n02 n03); several bracket groups multiply
    (`a[1-2]b[3-4]` -> a1b3 a1b4 a2b3 a2b4); duplicates are kept. Text after the last
    bracket, descending or empty ranges and unbalanced brackets are refused (scontrol
    refuses them too), as is a list of more than `limit` hosts.
    """
    hosts: list[str] = []
    for expr in _split_top(text):
        for host in _expand_one(expr, text, limit - len(hosts)):
            check_node_name(host, "slurm")
            hosts.append(host)
    return hosts


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    buf: list[str] = []
    for char in text:
        if char == "[":
            depth += 1
            if depth > 1:
                raise NodeError(f"slurm: nested brackets in host list {text!r}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeError(f"slurm: unbalanced ']' in host list {text!r}")
        if depth == 0 and (char == "," or char.isspace()):
            if buf:
                parts.append("".join(buf))
            buf = []
            continue
        buf.append(char)
    if depth:
        raise NodeError(f"slurm: unbalanced '[' in host list {text!r}")
    if buf:
        parts.append("".join(buf))
    return parts


def _expand_one(expr: str, text: str, room: int) -> list[str]:
    # expr = (prefix [ranges])* prefix? ; a literal may not follow the last bracket.
    pieces = re.split(r"\[([^\]]*)\]", expr)
    literals, groups = pieces[0::2], pieces[1::2]
    if groups and literals[-1]:
        raise NodeError(f"slurm: text after ']' in host list {text!r}")
    out = [""]
    for index, group in enumerate(groups):
        values = _expand_ranges(group, text)
        prefix = literals[index]
        if len(out) * len(values) > room:
            raise NodeError(f"slurm: host list {text[:60]!r} names more than "
                            f"{HOSTLIST_MAX} hosts")
        out = [head + prefix + value for head in out for value in values]
    if not groups:
        out = [literals[0]]
    if len(out) > room:
        raise NodeError(f"slurm: host list {text[:60]!r} names more than "
                        f"{HOSTLIST_MAX} hosts")
    return out


def _expand_ranges(group: str, text: str) -> list[str]:
    values: list[str] = []
    for item in group.split(","):
        match = _RANGE.fullmatch(item.strip())
        if not match:
            raise NodeError(f"slurm: invalid range {item!r} in host list {text!r}")
        low_text = match.group(1)
        low = int(low_text)
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise NodeError(f"slurm: descending range {item!r} in host list {text!r}")
        if high - low >= HOSTLIST_MAX:
            raise NodeError(f"slurm: host list {text[:60]!r} names more than "
                            f"{HOSTLIST_MAX} hosts")
        width = len(low_text)
        values.extend(str(number).zfill(width) for number in range(low, high + 1))
    return values


def count_ids(text: str) -> int:
    """`0-3,8,10-11` (CPU_IDs) -> 7."""
    try:
        return count_id_ranges(text)
    except ValueError:
        raise NodeError(f"slurm: cannot read the CPU id list {text!r}") from None


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
    token = rest.split(None, 1)[0] if rest and not rest[0].isspace() else ""
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
    for line in text.splitlines():
        if line.startswith("JobId="):
            records.append(_Record([line]))
        elif records:
            records[-1].lines.append(line)
        elif line.strip():
            stray.append(line)
    if stray and not records:
        raise NodeError("slurm: scontrol printed no job record: "
                        + _one_line(stray[0], 120))
    return records


def _tokens(text: str, record: _Record, where: str) -> list[tuple[str, str]]:
    out = []
    for token in text.split():
        key, eq, value = token.partition("=")
        if not eq or not key:
            record.problems.append(f"{where}: {_one_line(token, 40)!r} is not key=value")
            continue
        out.append((key, value))
    return out


def _is_one_liner(record: _Record) -> bool:
    """`scontrol show job -o`: the whole record on one line (never used by the adapter;
    read for completeness, and never trusted for a VM job: its free text is ambiguous)."""
    rest = [line for line in record.lines[1:] if line.strip()]
    return not rest and " UserId=" in record.lines[0].partition(" JobName=")[2]


def _parse_one_liner(record: _Record) -> None:
    key = None
    for token in record.lines[0].split():
        name, eq, value = token.partition("=")
        if eq and _KEY.fullmatch(name):
            key = name
            record.add(key, value)
        elif key is not None:
            values = record.values[key]
            values[-1] = f"{values[-1]} {token}"
    record.problems.append("one-line output (scontrol -o) cannot be split unambiguously")


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
                                   f"({_one_line(line, 40)!r})")
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
            data = json.loads(stripped)
        except ValueError as exc:
            raise NodeError(f"slurm: scontrol printed broken JSON for job {job_id}: "
                            f"{exc}") from None
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
        held = ", ".join(r.first("JobId") or "?" for r in records) or "no jobs"
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
                          f"(UserId={fields.get('UserId')!r})")
    group = _owner(fields.get("GroupId"))
    state = _value(fields.get("JobState"))
    restarts = fields.get("Restarts", "0")
    if strict and state is None:
        raise NodeError(f"slurm: the record of job {job_id} has no JobState")
    if not restarts.isdigit() or len(restarts) > 9:
        if strict:
            raise NodeError(f"slurm: job {job_id} has an unreadable Restarts={restarts!r}")
        restarts = "0"
    ctx = JobContext(
        scheduler="slurm", job_id=job_id, user=user or "", group=group,
        job_name=fields.get("JobName", ""), queue=_value(fields.get("Partition")),
        nodes=tuple(nodes), slots=tuple(slots), vm_request=vm_request,
        workdir=_value(fields.get("WorkDir")), run_count=int(restarts) + 1,
        variables={}, state=state)
    return SlurmJob(ctx, fields, comment=comment,
                    admin_comment=_value(fields.get("AdminComment"), keep_na=True),
                    batch_host=batch_host)


def _value(text: str | None, keep_na: bool = False) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if not text or text == "(null)" or (not keep_na and text in _NULL):
        return None
    return text


def _owner(text: str | None) -> str | None:
    """`alice(1001)` -> alice; None when there is no usable name."""
    match = _OWNER.fullmatch((text or "").strip())
    name = match.group(1) if match else ""
    if not name or not _USER.fullmatch(name) or name.startswith("-") or name == "(null)":
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
    total = int(total_text) if total_text.isdigit() and len(total_text) <= 9 else len(nodes)
    base, extra = divmod(max(total, len(nodes)), len(nodes))
    return [base + (1 if i < extra else 0) for i in range(len(nodes))]


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


# --- JSON (scontrol --json from 23.02 on; squeue --json, slurmrestd) ------------------------

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
    user = _owner(f"{job.get('user_name') or ''}(0)")
    if user is None and strict:
        raise RecordError(f"slurmctld shows no usable owner for job {job_id} "
                          f"(user_name={job.get('user_name')!r})")
    group = _owner(f"{job.get('group_name') or ''}(0)")
    state = job.get("job_state")
    if isinstance(state, list):
        state = state[0] if state else None
    if not isinstance(state, str) or not state:
        if strict:
            raise NodeError(f"slurm: job {job_id} has no job_state")
        state = None
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
    restarts = _number(job.get("restart_cnt")) or 0
    ctx = JobContext(
        scheduler="slurm", job_id=job_id, user=user or "", group=group,
        job_name=str(job.get("name") or ""), queue=job.get("partition") or None,
        nodes=tuple(nodes), slots=tuple(slots), vm_request=vm_request,
        workdir=job.get("current_working_directory") or None, run_count=restarts + 1,
        variables={}, state=state)
    return SlurmJob(ctx, {}, comment=comment, admin_comment=job.get("admin_comment") or None,
                    batch_host=batch_host)


def _json_slots(job: Mapping, nodes: list[str]) -> list[int]:
    resources = job.get("job_resources")
    per_node: dict[str, int] = {}
    if isinstance(resources, dict):
        allocated = resources.get("allocated_nodes")            # v0.0.38 .. v0.0.40
        if isinstance(resources.get("nodes"), dict):             # v0.0.41 +
            allocated = resources["nodes"].get("allocation")
        for entry in allocated if isinstance(allocated, list) else []:
            if not isinstance(entry, dict):
                continue
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


# --- the adapter -------------------------------------------------------------------------

def _one_line(text: str, limit: int) -> str:
    line = " ".join(_CONTROL.sub(" ", str(text)).split())
    return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."


def job_note(reason: str, previous: str | None = None) -> str:
    """An AdminComment: one line, prefixed, bounded; an admin's earlier note is kept."""
    text = _one_line(reason, NOTE_MAX)
    if not text.startswith("vtorque:"):
        text = _one_line("vtorque: " + text, NOTE_MAX)
    if previous and not previous.startswith("vtorque:"):
        text = _one_line(f"{text} | earlier: {previous}", NOTE_MAX)
    return text


@register
class Slurm(BatchSystem):
    """Slurm: scontrol show job to read jobs; scontrol update / requeuehold and scancel to
    act. Commands come from bin_dir; SLURM_CONF (set by slurmd for Prolog and Epilog) is
    passed on so a non-default slurm.conf is found."""

    name = "slurm"
    commands = ("sbatch", "scontrol")

    def __init__(self, bin_dir: str, timeout: float = 30.0,
                 environ: Mapping[str, str] | None = None):
        super().__init__(bin_dir, timeout)
        env = os.environ if environ is None else environ
        conf = env.get("SLURM_CONF", "")
        extra = {"SLURM_CONF": conf} if conf.startswith("/") and "\n" not in conf else {}
        self.env = proc.clean_env(extra)

    # -- reading ------------------------------------------------------------------------------
    def job(self, job_id: str) -> JobContext:
        return self.read_job(job_id).ctx

    def read_job(self, job_id: str) -> SlurmJob:
        check_job_id(job_id, self.name)
        text = self.query([self.command("scontrol"), "show", "job", "-dd", job_id], job_id)
        return parse_show_job(text, job_id)

    def query(self, argv: Sequence[str], job_id: str) -> str:
        """scontrol with SLURM_CONF; 'Invalid job id specified' (stderr) and 'Job N not
        found' (stdout) are UnknownJobError, as src/scontrol/info_job.c prints them."""
        try:
            done = proc.run(argv, timeout=self.timeout, check=False, env=self.env)
        except UnicodeDecodeError as exc:
            raise NodeError(f"slurm: {argv[0]} printed bytes that are not UTF-8 for job "
                            f"{job_id}: {exc.reason}") from None
        if done.returncode != 0:
            text = (done.stderr + "\n" + done.stdout).lower()
            if "invalid job id specified" in text or re.search(r"job \S+ not found", text):
                raise UnknownJobError(self.name, job_id, _one_line(done.stderr or
                                                                   done.stdout, 120))
            raise CommandError(list(argv), done.returncode, done.stdout, done.stderr)
        return done.stdout

    # -- acting ---------------------------------------------------------------------------------
    def _run(self, argv: list[str]) -> None:
        proc.run(argv, timeout=self.timeout, env=self.env)

    def offline_node(self, node: str, reason: str) -> None:
        """Drain the node (running jobs finish, no new ones start): `sinfo -R` shows the
        reason, and Slurm keeps it when a failed Prolog drains the node again."""
        check_node_name(node, self.name)
        self._run([self.command("scontrol"), "update", f"nodename={node}", "state=drain",
                   f"reason={node_note(reason)}"])

    def note_job(self, job_id: str, reason: str, previous: str | None = None) -> None:
        """Put `reason` where `scontrol show job` (and sacct) show it: AdminComment, which
        only an administrator (root here) can set, so the user cannot fake or erase it."""
        check_job_id(job_id, self.name)
        self._run([self.command("scontrol"), "update", f"jobid={job_id}",
                   f"admincomment={job_note(reason, previous)}"])

    def cancel_job(self, job_id: str) -> None:
        """End the job (CANCELLED); -Q: a job that already ended is no error."""
        check_job_id(job_id, self.name)
        self._run([self.command("scancel"), "-Q", job_id])

    def requeue_hold(self, job_id: str) -> None:
        """Back to the queue, held (an admin releases it): `requeuehold Incomplete`, so a
        job that has ended already (cancelled by another node) is left as it is. Fails
        (CommandError) for a job submitted with --no-requeue."""
        check_job_id(job_id, self.name)
        self._run([self.command("scontrol"), "requeuehold", "Incomplete", job_id])
