"""Torque: read a job back from pbs_server, take a node offline.

The job comes from `qstat -f -x JOBID` (XML: `<Data><Job>...</Job></Data>`; Torque 6.x puts
`<?xml version="1.0"?>` first, 4.x/5.x do not), or from pbs_python where libtorque is
installed. Parsing is pure (parse_qstat_xml, parse_exec_host, parse_variable_list) so the
tests cover it without subprocesses; the OpenPBS adapter reuses the attribute mapping.
Reference: /work/shared/reference/torque-contract.md and samples/torque-qstat-f-x.xml.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from vtorque import proc
from vtorque.batch.base import (
    BatchSystem,
    JobContext,
    check_job_id,
    check_node_name,
    count_id_ranges,
    node_note,
    pick_job,
    register,
)
from vtorque.errors import NodeError
from vtorque.request import JOB_VARIABLE

# Characters XML 1.0 forbids. Torque escapes & " ' < > (MXMLSetVal) but copies control
# characters of user-set values (Job_Name, -v variables) as they are, which would make
# the whole document unparsable; they are dropped before parsing.
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_USER = re.compile(r"[A-Za-z0-9_][^\s/:\x00-\x1f\x7f]{0,255}")


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
    if not user or not _USER.fullmatch(user) or user.startswith("-"):
        raise NodeError(f"{scheduler}: job {job_id} has no usable owner "
                        f"(euser={attrs.get('euser')!r}, Job_Owner={owner!r})")
    group = attrs.get("egroup", "").strip() or None
    if group is not None and (not _USER.fullmatch(group) or group.startswith("-")):
        raise NodeError(f"{scheduler}: job {job_id} has an unusable group {group!r}")
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


def _flatten(job: ET.Element) -> dict[str, str]:
    """<Job> children -> {tag: text}; nested resources as `Parent.child` (like qstat -f)."""
    attrs: dict[str, str] = {}
    for child in job:
        if len(child):
            for sub in child:
                attrs[f"{child.tag}.{sub.tag}"] = (sub.text or "").strip()
        else:
            attrs[child.tag] = (child.text or "").strip()
    return attrs


def parse_qstat_xml(text: str, job_id: str) -> JobContext:
    """`qstat -f -x` output (Torque 4, 5 or 6; one job or several) -> the JobContext of
    `job_id`. NodeError when the text is not Torque's XML or does not hold the job."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise NodeError(f"torque: qstat -f -x output for job {job_id} carries a DTD; "
                        "Torque never prints one")
    try:
        root = ET.fromstring(_XML_FORBIDDEN.sub("", text.strip()).encode("utf-8"))
    except ET.ParseError as exc:
        raise NodeError(f"torque: cannot parse qstat -f -x output for job {job_id}: "
                        f"{exc}") from None
    if root.tag not in ("Data", "Job"):
        raise NodeError(f"torque: qstat -f -x output for job {job_id} is not "
                        f"<Data> (root element <{root.tag}>)")
    jobs = [root] if root.tag == "Job" else root.findall("Job")
    by_id = {(j.findtext("Job_Id") or "").strip(): j for j in jobs}
    found = pick_job(list(by_id), job_id)
    if found is None:
        raise NodeError(f"torque: qstat -f -x output does not hold job {job_id} "
                        f"(it holds: {', '.join(by_id) or 'no jobs'})")
    attrs = _flatten(by_id[found])
    return context_from_attrs("torque", job_id, attrs,
                              parse_variable_list(attrs.get("Variable_List", "")))


@register
class Torque(BatchSystem):
    """Torque 4/5/6: qstat -f -x (or pbs_python) to read jobs, pbsnodes -o -N to offline."""

    name = "torque"
    commands = ("qsub", "qstat", "pbsnodes")

    def __init__(self, bin_dir: str, timeout: float = 30.0, use_pbs_python: bool = True):
        super().__init__(bin_dir, timeout)
        self.use_pbs_python = use_pbs_python

    def job(self, job_id: str) -> JobContext:
        check_job_id(job_id, self.name)
        ctx = self._job_via_pbs_python(job_id) if self.use_pbs_python else None
        if ctx is not None:
            return ctx
        text = self.query([self.command("qstat"), "-f", "-x", job_id], job_id)
        return parse_qstat_xml(text, job_id)

    def offline_node(self, node: str, reason: str) -> None:
        check_node_name(node, self.name)
        proc.run([self.command("pbsnodes"), "-o", "-N", node_note(reason), node],
                 timeout=self.timeout)

    # -- pbs_python ----------------------------------------------------------------------------
    # UNTESTED HERE: pbs_python (a SWIG binding over libtorque) is never installed on the
    # development machines. Any failure falls back to qstat, which reports errors precisely.
    def _job_via_pbs_python(self, job_id: str) -> JobContext | None:
        try:
            import pbs  # type: ignore[import-not-found]
        except ImportError:
            return None
        # OpenPBS hooks have an unrelated module called pbs; only libtorque's has these.
        if not all(hasattr(pbs, f) for f in ("pbs_connect", "pbs_default", "pbs_statjob",
                                              "pbs_disconnect")):
            return None
        try:
            conn = pbs.pbs_connect(pbs.pbs_default())
            if conn is None or conn < 0:
                return None
            try:
                status = pbs.pbs_statjob(conn, job_id, None, None)
            finally:
                pbs.pbs_disconnect(conn)
            if not status:
                return None
            by_id = {str(s.name): s for s in status}
            found = pick_job(list(by_id), job_id)
            if found is None:
                return None
            attrs: dict[str, str] = {}
            for a in by_id[found].attribs:
                key = f"{a.name}.{a.resource}" if getattr(a, "resource", None) else a.name
                attrs[str(key)] = str(a.value)
        except Exception:  # noqa: BLE001  (untested binding: any surprise -> use qstat)
            return None
        return context_from_attrs(self.name, job_id, attrs,
                                  parse_variable_list(attrs.get("Variable_List", "")))
