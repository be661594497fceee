"""Torque: read a job back from pbs_server, take a node offline.

The job comes from `qstat -f -x JOBID` (XML: `<Data><Job>...</Job></Data>`; Torque 6.x puts
`<?xml version="1.0"?>` first, 4.x/5.x do not), or from pbs_python where libtorque is
installed. Parsing is pure (parse_qstat_xml here, the PBS family's attribute mapping in pbs.py) so
the tests cover it without subprocesses.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from vtorque import jobid
from vtorque.batch.base import (
    BatchSystem,
    JobContext,
    check_node_name,
    node_note,
    note,
    pick_job,
)
from vtorque.batch.pbs import context_from_attrs, parse_variable_list, refuse_repeated
from vtorque.batch.registry import register
from vtorque.errors import NodeError, RecordError
from vtorque.text import one_line

# Characters XML 1.0 forbids. Torque escapes & " ' < > (MXMLSetVal) but copies control
# characters of user-set values (Job_Name, -v variables) as they are, which would make
# the whole document unparsable; they are dropped before parsing.
COMMENT_MAX = 400                   # the job comment vtorque writes
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _flatten(job: ET.Element, job_id: str) -> dict[str, str]:
    """<Job> children -> {tag: text}; nested resources as `Parent.child` (like qstat -f).
    A deciding attribute given twice is a RecordError (refuse_repeated)."""
    attrs: dict[str, str] = {}
    repeated: set[str] = set()

    def put(name: str, text: str | None) -> None:
        if name in attrs:
            repeated.add(name)
        attrs[name] = (text or "").strip()

    parents: set[str] = set()
    for child in job:
        if len(child):
            if child.tag in parents:
                repeated.add(child.tag)
            parents.add(child.tag)
            for sub in child:
                put(f"{child.tag}.{sub.tag}", sub.text)
        else:
            put(child.tag, child.text)
    refuse_repeated("torque", job_id, repeated)
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
    ids = [(j.findtext("Job_Id") or "").strip() for j in jobs]
    by_id = dict(zip(ids, jobs, strict=True))
    found = pick_job(list(by_id), job_id)
    if found is None:
        held = one_line(", ".join(by_id) or "no jobs", 200)
        raise NodeError(f"torque: qstat -f -x output does not hold job {job_id} "
                        f"(it holds: {held})")
    if ids.count(found) > 1:
        raise RecordError(f"the torque record of job {job_id} is ambiguous: "
                          f"{ids.count(found)} records claim its id")
    attrs = _flatten(by_id[found], job_id)
    return context_from_attrs("torque", job_id, attrs,
                              parse_variable_list(attrs.get("Variable_List", ""),
                                                  "torque", job_id))


@register
class Torque(BatchSystem):
    """Torque 4/5/6: qstat -f -x (or pbs_python) to read jobs, pbsnodes -o -N to offline."""

    name = "torque"
    commands = ("qsub", "qstat", "pbsnodes")

    def __init__(self, bin_dir: str, timeout: float = 30.0, use_pbs_python: bool = True):
        super().__init__(bin_dir, timeout)
        self.use_pbs_python = use_pbs_python

    def job(self, job_id: str) -> JobContext:
        jobid.check(job_id, self.name)
        ctx = self._job_via_pbs_python(job_id) if self.use_pbs_python else None
        if ctx is not None:
            return ctx
        text = self.query([self.command("qstat"), "-f", "-x", job_id], job_id)
        return parse_qstat_xml(text, job_id)

    def offline_node(self, node: str, reason: str) -> None:
        check_node_name(node, self.name)
        self.run([self.command("pbsnodes"), "-o", "-N", node_note(reason), node])

    def note_job(self, job_id: str, reason: str, previous: str | None = None) -> bool:
        """The job's comment (`qstat -f` shows it, also after the job ended): settable by
        operators and managers only, never by the owner. Takes the same privilege as
        pbsnodes -o. qalter -W refuses a bare value with '=' or ',' in it (exit 2,
        "illegal -W value") and takes it in double quotes, which the note never holds."""
        jobid.check(job_id, self.name)
        text = note(reason, COMMENT_MAX).replace('"', "'")
        self.run([self.command("qalter"), "-W", f'comment="{text}"', job_id])
        return True

    # -- pbs_python ----------------------------------------------------------------------------
    # pbs_python (SARA's SWIG binding of libtorque, built by scripts/torque-cluster) reads
    # the same record as qstat -f -x without a process per query; tests/e2e/
    # test_torque_real.py compares both paths on a running job of the real server. Any
    # failure falls back to qstat, which reports errors precisely.
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
                # pbs_python spells C NULL as the string "NULL" (its SWIG typemaps).
                status = pbs.pbs_statjob(conn, job_id, "NULL", "NULL")
            finally:
                pbs.pbs_disconnect(conn)
            if not status:
                return None
            by_id = {str(s.name): s for s in status}
            found = pick_job(list(by_id), job_id)
            if found is None:
                return None
            attrs: dict[str, str] = {}
            repeated = set()
            for a in by_id[found].attribs:
                key = f"{a.name}.{a.resource}" if getattr(a, "resource", None) else a.name
                if str(key) in attrs:
                    repeated.add(str(key))
                attrs[str(key)] = str(a.value)
        except Exception:  # noqa: BLE001  (untested binding: any surprise -> use qstat)
            return None
        refuse_repeated(self.name, job_id, repeated)
        return context_from_attrs(self.name, job_id, attrs,
                                  parse_variable_list(attrs.get("Variable_List", ""),
                                                      self.name, job_id))
