"""The job's vm_prologue and vm_epilogue (-vm keys): scripts inside the guests, run as the
job owner in every guest of the job, before and after the job script.

The prologue on the mother superior leaves their guest paths in the job's user directory
(`vm-prologue`, `vm-epilogue`) with every guest (`guests`: "HOSTNAME ADDRESS" lines). The
job shell then, as the owner:

1. runs vm_prologue in every guest at once (Linux: over SSH, in the job's working
   directory with the job's environment; OSv: through the launcher). If it fails in any
   guest (exit status not 0, or it cannot be run), the job script does not run, nor does
   vm_epilogue; the job ends with that status (the first failing guest by rank; 255 when
   the guest could not be reached) and one line on stderr naming the script, the guest
   and the status: the job failed, as the user's own error, not the node's.
2. runs the job script in guest rank 0: status S.
3. runs vm_epilogue in every guest, whatever S, with VTORQUE_JOB_EXIT_STATUS=S. A failure
   is reported the same way; the job's status is S when S is not 0, else the first failing
   vm_epilogue's (a job whose clean-up failed did not succeed).

A path that is executable runs as a program, any other file with /bin/sh.
VTORQUE_VM_SCRIPT says which one runs (prologue or epilogue).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

PROLOGUE, EPILOGUE = "prologue", "epilogue"
STATUS_UNREACHABLE = 255


@dataclass(frozen=True)
class JobGuest:
    hostname: str
    address: str | None


def _read(user_dir: str, name: str) -> str:
    try:
        with open(os.path.join(user_dir, name)) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def scripts(user_dir: str) -> tuple[str | None, str | None]:
    """(vm_prologue, vm_epilogue) guest paths of the job, None for each not asked."""
    return (_read(user_dir, "vm-prologue") or None, _read(user_dir, "vm-epilogue") or None)


def guests(user_dir: str) -> list[JobGuest]:
    """Every guest of the job, by rank."""
    out = []
    for line in _read(user_dir, "guests").splitlines():
        words = line.split()
        if len(words) == 2:
            out.append(JobGuest(words[0], None if words[1] == "-" else words[1]))
    return out


def script_command(path: str, env: Mapping[str, str], workdir: str | None) -> str:
    """The shell line a Linux guest runs for one of the scripts: the job's working
    directory (else the home directory), the job's environment, the script."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    cd = f"cd {shlex.quote(workdir)} 2>/dev/null || cd" if workdir else "cd"
    p = shlex.quote(path)
    return (f"{cd}; export {exports}; "
            f"if [ -x {p} ] && [ -f {p} ]; then exec {p}; else exec /bin/sh {p}; fi")


def run_everywhere(run_one: Callable[[JobGuest], int], job_guests: Sequence[JobGuest]
                   ) -> list[int]:
    """Each guest's status, in rank order, the scripts running at the same time."""
    if not job_guests:
        return []
    with ThreadPoolExecutor(max_workers=min(len(job_guests), 16)) as pool:
        return list(pool.map(run_one, job_guests))


def first_failure(statuses: Sequence[int], job_guests: Sequence[JobGuest]
                  ) -> tuple[JobGuest, int] | None:
    for guest, status in zip(job_guests, statuses, strict=True):
        if status != 0:
            return guest, status
    return None


def report(what: str, path: str, guest: JobGuest, status: int, after: str) -> None:
    how = ("could not be run there (the guest did not answer)"
           if status == STATUS_UNREACHABLE else f"exited with status {status}")
    print(f"vtorque: vm_{what} {path} failed on guest {guest.hostname}: it {how}{after}",
          file=sys.stderr, flush=True)


def around(run_script: Callable[[], int], run_in: Callable[[JobGuest, str, str, int], int],
           user_dir: str) -> int:
    """The job: vm_prologue everywhere, the script, vm_epilogue everywhere (see the
    module's docstring). `run_in(guest, what, path, job_status)` runs one script in one
    guest and returns its status."""
    prologue, epilogue = scripts(user_dir)
    job_guests = guests(user_dir) if prologue or epilogue else []
    if prologue:
        statuses = run_everywhere(lambda g: run_in(g, PROLOGUE, prologue, 0), job_guests)
        failed = first_failure(statuses, job_guests)
        if failed:
            report(PROLOGUE, prologue, *failed, after=": the job script was not run")
            return failed[1]
    status = run_script()
    if epilogue:
        statuses = run_everywhere(lambda g: run_in(g, EPILOGUE, epilogue, status),
                                  job_guests)
        failed = first_failure(statuses, job_guests)
        if failed:
            report(EPILOGUE, epilogue, *failed, after="")
            if status == 0:
                return failed[1]
    return status
