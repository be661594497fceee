"""The one rule for job ids, wherever they come from (hook arguments, the batch server's
records, an admin's --job): what Torque, OpenPBS and Slurm print, and nothing that could
hurt an argv or a path. A leaf module: the hooks check ids before anything else loads."""

from __future__ import annotations

import re

from vtorque.errors import JobIdError

# 123.server, 12[1].server, 12[].server.domain, 4711, 12_3, 5+1 (Slurm het jobs).
_JOB_ID = re.compile(r"[0-9][A-Za-z0-9._\[\]@+-]{0,254}")


def check(job_id: object, source: str = "batch") -> str:
    """`job_id` if it is one, else JobIdError naming `source` and the (bounded) value."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or ".." in job_id:
        shown = repr(job_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise JobIdError(f"{source}: {shown} is not a job id (a digit first, then letters, "
                         "digits and . _ [ ] @ + -, at most 255 characters)")
    return job_id
