"""The job shell: what runs the job script inside guest rank 0, as the job's owner.

vsub submits VM jobs with `qsub -S <job shell>` (Slurm: a wrapper script), an
admin-installed shim calling `python -m vtorque.jobshell`; the batch system starts it as
the job owner on the mother superior, with the script on standard input (or as an
argument) and the PBS_*/SLURM_* environment, after the prologues brought every guest up.
It reads the job's files the prologue left in the job's user directory and runs the
script in rank 0: over SSH for Linux guests (ssh.py), through OSv's REST API for OSv
guests (osv.py). The job's stdout and stderr are the batch system's as usual, and the
script's exit status becomes the job's. The job's vm_prologue and vm_epilogue run as the
owner in every guest around it; their exit handling is vmscripts.py's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from vtorque.errors import VtorqueError


def run(script: str, env: Mapping[str, str], config_path: str | None) -> int:
    from vtorque import config as config_mod
    from vtorque.journal import JobPaths
    job_id = env.get("PBS_JOBID") or env.get("SLURM_JOB_ID")
    if not job_id:
        raise VtorqueError("job-shell: no PBS_JOBID or SLURM_JOB_ID: run by the batch system")
    config = config_mod.load(config_path)
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    try:
        with open(os.path.join(paths.user_dir, "rank0")) as handle:
            rank0 = handle.read().strip()
    except OSError:
        raise VtorqueError(f"job-shell: job {job_id} has no guests on this node "
                           f"({paths.user_dir} missing); was it submitted with vsub?") from None
    if _read(paths.user_dir, "guest-kind") == "osv":
        return _run_osv(script, env, job_id, _read(paths.user_dir, "rank0-address"),
                        paths.user_dir)
    from vtorque.jobshell import ssh
    return ssh.run(script, env, job_id, paths.user_dir, rank0)


def _read(directory: str, name: str) -> str:
    try:
        with open(os.path.join(directory, name)) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def osv_command(script: str) -> str:
    """OSv runs programs, not shell scripts: the job script's one command line (comments,
    #PBS directives and blank lines aside) is the program and its arguments."""
    lines = [ln.strip() for ln in script.splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) != 1:
        raise VtorqueError("job-shell: an OSv job script must hold exactly one command line "
                           f"(found {len(lines)})")
    return lines[0]


def _run_osv(script: str, env: Mapping[str, str], job_id: str, address: str,
             user_dir: str) -> int:
    """The job's one command in OSv rank 0, its vm_prologue and vm_epilogue (programs in
    the image) in every guest, each through the launcher (jobshell/vmscripts.py)."""
    from vtorque.jobshell import osv, vmscripts
    from vtorque.jobshell.ssh import guest_environment
    if not address:
        raise VtorqueError(f"job-shell: job {job_id}: no address for OSv rank 0")
    command = osv_command(script)
    guest_env = guest_environment(env, job_id)

    def run_in(guest: vmscripts.JobGuest, what: str, path: str, status: int) -> int:
        if not guest.address:
            return vmscripts.STATUS_UNREACHABLE
        extra = {"VTORQUE_VM_SCRIPT": what}
        if what == vmscripts.EPILOGUE:
            extra["VTORQUE_JOB_EXIT_STATUS"] = str(status)
        return osv.run_job(guest.address, [path], env={**guest_env, **extra})

    # OSv has one environment per guest: what a vm_prologue had set is unset for the job.
    job_env = {**guest_env, "VTORQUE_VM_SCRIPT": "", "VTORQUE_JOB_EXIT_STATUS": ""}
    return vmscripts.around(lambda: osv.run_job(address, command, env=job_env), run_in,
                            user_dir)


def main(args: list[str], config_path: str | None) -> int:
    """`vtorque job-shell [SCRIPT]`: the script from the argument or standard input."""
    try:
        if args and not args[0].startswith("-"):
            with open(args[0]) as handle:
                script = handle.read()
        else:
            script = sys.stdin.read()
            # PBS on Linux feeds a -S shell one line naming the job's script file rather
            # than the script itself; Torque feeds the script.
            named = script.strip()
            if "\n" not in named and named.startswith("/") and os.path.isfile(named):
                with open(named) as handle:
                    script = handle.read()
        return run(script, os.environ, config_path)
    except VtorqueError as exc:
        print(f"vtorque: {exc}", file=sys.stderr)
        return 1
