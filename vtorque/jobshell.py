"""The job's shell: runs the job script inside guest rank 0 as the job's owner.

vsub submits VM jobs with `qsub -S <job shell>` (an admin-installed shim calling
`vtorque job-shell`), so the batch system starts this, as the job owner, on the mother
superior, with the script on standard input (or as an argument) and the PBS_* environment,
after the prologues brought every guest up. It logs into guest rank 0 with the job's own
key and pinned host keys (files the prologue left in the job's user directory), feeds it
the script, and streams output back: the job's stdout and stderr are the batch system's
as usual, and the script's exit status becomes the job's.

Why SSH: it is what Open MPI uses between the guests anyway; it carries stdin, stdout,
stderr and the exit status; it runs as the user with no privilege on the host (the qemu
guest agent would need libvirt, i.e. root); and with per-job keys and pinned host keys it
needs no trust beyond the job.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
from collections.abc import Mapping

from vtorque import config as config_mod
from vtorque import proc
from vtorque.errors import VtorqueError
from vtorque.journal import JobPaths

SSH = "/usr/bin/ssh"
PROBE_ATTEMPTS = 4
PROBE_PAUSE = 3.0
GUEST_NODEFILE = "/etc/vtorque/nodefile"
GUEST_HOSTFILE = "/etc/vtorque/hostfile"
_SHELL = re.compile(r"/[A-Za-z0-9._/+-]+")
# Variables that describe the job, passed to the guest; translated where they name host
# paths. Everything else of the host environment stays on the host.
_PASSED_PREFIXES = ("PBS_", "SLURM_")
_TRANSLATED = {"PBS_NODEFILE": GUEST_NODEFILE, "SLURM_HOSTFILE": GUEST_NODEFILE}
_DROPPED = {"PBS_O_PATH", "PBS_O_SHELL", "PBS_O_MAIL", "SLURM_CONF"}


def script_shell(script: str) -> tuple[str, list[str]]:
    """The interpreter the script asks for on its #! line (default /bin/sh)."""
    first = script.split("\n", 1)[0]
    if first.startswith("#!"):
        words = first[2:].split()
        if words and _SHELL.fullmatch(words[0]):
            return words[0], words[1:2]
    return "/bin/sh", []


def guest_environment(env: Mapping[str, str], job_id: str) -> dict[str, str]:
    out = {k: v for k, v in env.items()
           if k.startswith(_PASSED_PREFIXES) and k not in _DROPPED}
    out.update({k: v for k, v in _TRANSLATED.items() if k in env or k == "PBS_NODEFILE"})
    out["VTORQUE_JOB_ID"] = job_id
    out["VTORQUE_HOSTFILE"] = GUEST_HOSTFILE
    # mpirun in the guest finds every guest with no extra flags: the job's hostfile, ssh
    # to start its daemons, and never the batch system's own launchers (SLURM_*/PBS_*
    # name the hosts, not the guests, and there is no srun or TM inside a guest).
    out["OMPI_MCA_orte_default_hostfile"] = GUEST_HOSTFILE
    out["OMPI_MCA_plm"] = "rsh"
    out["OMPI_MCA_ras"] = "^slurm,tm"
    return out


def remote_command(env: Mapping[str, str], workdir: str | None, shell: str,
                   shell_args: list[str]) -> str:
    """The command line guest rank 0 runs: enter the submission directory (falling back
    to the home directory, as the batch system does), set the job's environment, read the
    script from stdin. Every value is quoted: nothing here is interpreted twice."""
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    cd = f"cd {shlex.quote(workdir)} 2>/dev/null || cd" if workdir else "cd"
    args = " ".join(shlex.quote(a) for a in shell_args)
    return f"{cd}; export {exports}; exec {shlex.quote(shell)} {args} -s".replace("  ", " ")


def run(script: str, env: Mapping[str, str], config_path: str | None) -> int:
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
        return _run_osv(script, env, job_id, _read(paths.user_dir, "rank0-address"))
    shell, shell_args = script_shell(script)
    asked = env.get("VTORQUE_SHELL", "")
    if _SHELL.fullmatch(asked):       # the user's qsub -S, kept by vsub for the guest
        shell, shell_args = asked, []
    command = remote_command(guest_environment(env, job_id),
                             env.get("PBS_O_WORKDIR") or env.get("SLURM_SUBMIT_DIR"),
                             shell, shell_args)
    ssh = [SSH, "-F", os.path.join(paths.user_dir, "ssh_config"), "-T", rank0]
    ssh_env = {"PATH": proc.SAFE_PATH, "HOME": env.get("HOME", "/"), "LC_ALL": "C"}
    # ssh's own failures and the script's exit status 255 look alike: make sure the
    # guest takes logins first (a busy node's guests can be slow to answer), bounded.
    for attempt in range(PROBE_ATTEMPTS):
        probe = proc.run([*ssh, "true"], timeout=120, check=False, env=ssh_env)
        if probe.returncode == 0:
            break
        time.sleep(PROBE_PAUSE * (attempt + 1))
    else:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else \
            f"ssh exit status {probe.returncode}"
        print(f"vtorque: job-shell: cannot log into guest {rank0}: {reason}", file=sys.stderr)
        return 255
    done = proc.run([*ssh, command], timeout=None, check=False, input=script,
                    capture=False, env=ssh_env)
    if done.returncode == 255:
        print(f"vtorque: job-shell: ssh to guest {rank0} failed", file=sys.stderr)
    return done.returncode


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


def _run_osv(script: str, env: Mapping[str, str], job_id: str, address: str) -> int:
    from vtorque import osv
    if not address:
        raise VtorqueError(f"job-shell: job {job_id}: no address for OSv rank 0")
    return osv.run_job(address, osv_command(script), env=guest_environment(env, job_id))


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
