"""OpenPBS / PBS Professional: read a job back from the server, take a vnode offline.

The job comes from `qstat -f -F json -x JOBID` (in PBS, -x includes finished jobs):
`{"Jobs": {"<id>": {attribute: value, "Resource_List": {...}, "Variable_List": {...}}}}`.
The attribute names are Torque's, so the mapping to JobContext is the PBS family's
(pbs.py).
"""

from __future__ import annotations

import json
from typing import Any

from vtorque import jobid
from vtorque.batch.base import (
    BatchSystem,
    JobContext,
    check_node_name,
    load_json,
    node_note,
    pick_job,
    repeated,
)
from vtorque.batch.pbs import context_from_attrs, parse_variable_list, refuse_repeated
from vtorque.batch.registry import register
from vtorque.errors import NodeError, RecordError
from vtorque.text import one_line

_JSON_ESCAPES = set('"\\/bfnrtu')


def _loads(text: str) -> Any:
    # Everything numeric stays text: variables like 1.50 or 005 must keep their spelling.
    # load_json: json.loads would keep the last of two equal keys without a word.
    return load_json(text, strict=False, parse_int=str, parse_float=str,
                     parse_constant=_no_constant)


def _no_constant(name: str) -> str:
    return name             # NaN, Infinity: text, like every other number


def _repair(text: str) -> str:
    """Undo two known PBS JSON defects (both hit Variable_List, which users control):

    - backslashes JSON does not know inside strings, e.g. `\\,` and `\\'` (servers
      before OpenPBS 20.0): the backslash is dropped;
    - unquoted values that are not JSON numbers, e.g. `"foo":005`: they are quoted.
    Unescaped double quotes in strings (older servers) cannot be repaired.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':                                   # copy one string, fixing escapes
            out.append(ch)
            i += 1
            while i < n:
                c = text[i]
                if c == "\\" and i + 1 < n:
                    nxt = text[i + 1]
                    out.append(c + nxt if nxt in _JSON_ESCAPES else nxt)
                    i += 2
                    continue
                out.append(c)
                i += 1
                if c == '"':
                    break
            continue
        out.append(ch)
        i += 1
        if ch != ":":
            continue
        while i < n and text[i] in " \t\r\n":
            out.append(text[i])
            i += 1
        if i >= n or text[i] in '"{[':
            continue
        j = i
        while j < n and text[j] not in ",}]\n":
            j += 1
        token = text[i:j].rstrip()
        if _is_json_scalar(token):
            out.append(text[i:j])
        else:
            out.append(json.dumps(token) + text[i + len(token):j])
        i = j
    return "".join(out)


def _is_json_scalar(token: str) -> bool:
    try:
        json.loads(token)
    except ValueError:
        return False
    return True


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_qstat_json(text: str, job_id: str) -> JobContext:
    """`qstat -f -F json [-x]` output (one job or several) -> the JobContext of `job_id`.
    NodeError when the text is not PBS's JSON or does not hold the job."""
    try:
        data = _loads(text)
    except ValueError:
        try:
            data = _loads(_repair(text))
        except (ValueError, RecursionError) as exc:
            raise NodeError(f"openpbs: cannot parse qstat -f -F json output for job "
                            f"{job_id}: {one_line(exc, 120)}") from None
    except RecursionError:
        raise NodeError(f"openpbs: qstat -f -F json output for job {job_id} is nested "
                        "too deeply") from None
    jobs = data.get("Jobs") if isinstance(data, dict) else None
    if jobs is None:
        jobs = {}
    if not isinstance(jobs, dict):
        raise NodeError(f"openpbs: qstat -f -F json output for job {job_id} has no "
                        "Jobs object")
    found = pick_job(list(jobs), job_id)
    if found is None or not isinstance(jobs[found], dict):
        held = one_line(", ".join(jobs) or "no jobs", 200)
        raise NodeError(f"openpbs: qstat -f -F json output does not hold job {job_id} "
                        f"(it holds: {held})")
    if "Jobs" in repeated(data) or found in repeated(jobs):
        raise RecordError(f"the openpbs record of job {job_id} is ambiguous: more than one "
                          "record claims its id")
    job = jobs[found]
    refuse_repeated("openpbs", job_id, repeated(job))
    attrs: dict[str, str] = {}
    variables: dict[str, str] = {}
    for key, value in job.items():
        if key == "Variable_List":
            if isinstance(value, dict):
                refuse_repeated("openpbs", job_id, repeated(value), "variable")
                # PBS stores ',' in values as '\,'; JSON output before 20.0 kept the
                # backslash, later versions drop it.
                variables = {k: _text(v).replace("\\,", ",") for k, v in value.items()}
            else:
                variables = parse_variable_list(_text(value), "openpbs", job_id)
        elif isinstance(value, dict):
            refuse_repeated("openpbs", job_id, (f"{key}.{sub}" for sub in repeated(value)))
            for sub, subvalue in value.items():
                attrs[f"{key}.{sub}"] = _text(subvalue)
        else:
            attrs[key] = _text(value)
    return context_from_attrs("openpbs", job_id, attrs, variables)


@register
class OpenPBS(BatchSystem):
    """OpenPBS / PBS Professional: qstat -f -F json -x to read jobs, pbsnodes -o -C to
    offline a vnode."""

    name = "openpbs"
    commands = ("qsub", "qstat", "pbsnodes", "qmgr")

    def job(self, job_id: str) -> JobContext:
        jobid.check(job_id, self.name)
        text = self.query([self.command("qstat"), "-f", "-F", "json", "-x", job_id], job_id)
        return parse_qstat_json(text, job_id)

    def offline_node(self, node: str, reason: str) -> None:
        check_node_name(node, self.name)
        self.run([self.command("pbsnodes"), "-o", "-C", node_note(reason), node])
