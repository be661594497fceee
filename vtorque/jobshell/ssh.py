"""The job shell for Linux guests: the script runs in guest rank 0 over SSH.

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

from vtorque import guest_layout, proc
from vtorque.text import one_line

SSH = "/usr/bin/ssh"
PROBE_ATTEMPTS = 4
PROBE_PAUSE = 3.0
GUEST_NODEFILE = guest_layout.NODEFILE
GUEST_HOSTFILE = guest_layout.HOSTFILE
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


def job_workdir(env: Mapping[str, str]) -> str | None:
    """Where the job runs in the guest: PBS's submission directory, Slurm's working
    directory (where slurmd started the job shell); as the node resolves it, which is
    where the guests mount it."""
    if env.get("PBS_O_WORKDIR"):
        path = env["PBS_O_WORKDIR"]
    elif env.get("SLURM_JOB_ID"):
        try:
            path = os.getcwd()
        except OSError:
            path = env.get("SLURM_SUBMIT_DIR", "")
    else:
        path = env.get("SLURM_SUBMIT_DIR", "")
    if not path:
        return None
    real = os.path.realpath(path)
    return real if os.path.isdir(real) else path


def run(script: str, env: Mapping[str, str], job_id: str, user_dir: str, rank0: str) -> int:
    """Run `script` in Linux guest rank 0 (`rank0`, a host name the job's ssh_config in
    `user_dir` knows) over SSH, with the job's vm_prologue and vm_epilogue around it in
    every guest (jobshell/vmscripts.py); returns the job's exit status (255: ssh failed)."""
    from vtorque.jobshell import vmscripts
    shell, shell_args = script_shell(script)
    asked = env.get("VTORQUE_SHELL", "")
    if _SHELL.fullmatch(asked):       # the user's qsub -S, kept by vsub for the guest
        shell, shell_args = asked, []
    workdir = job_workdir(env)
    guest_env = guest_environment(env, job_id)
    command = remote_command(guest_env, workdir, shell, shell_args)
    config = ["-F", os.path.join(user_dir, "ssh_config"), "-T"]
    ssh = [SSH, *config, rank0]
    ssh_env = {"PATH": proc.SAFE_PATH, "HOME": env.get("HOME", "/"), "LC_ALL": "C"}
    # ssh's own failures and the script's exit status 255 look alike: make sure the
    # guest takes logins first (a busy node's guests can be slow to answer), bounded.
    for attempt in range(PROBE_ATTEMPTS):
        if attempt:
            time.sleep(PROBE_PAUSE * attempt)
        probe = proc.run([*ssh, "true"], timeout=120, check=False, env=ssh_env)
        if probe.returncode == 0:
            break
    else:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else \
            f"ssh exit status {probe.returncode}"
        print(f"vtorque: job-shell: cannot log into guest {rank0}: {one_line(reason)}",
              file=sys.stderr)
        return 255

    def run_script() -> int:
        done = proc.run([*ssh, command], timeout=None, check=False, input=script,
                        capture=False, env=ssh_env)
        if done.returncode == 255:
            print(f"vtorque: job-shell: ssh to guest {rank0} failed", file=sys.stderr)
        return done.returncode

    def run_in(guest: vmscripts.JobGuest, what: str, path: str, status: int) -> int:
        extra = {"VTORQUE_VM_SCRIPT": what}
        if what == vmscripts.EPILOGUE:
            extra["VTORQUE_JOB_EXIT_STATUS"] = str(status)
        line = vmscripts.script_command(path, {**guest_env, **extra}, workdir)
        return proc.run([SSH, *config, guest.hostname, line], timeout=None, check=False,
                        capture=False, env=ssh_env).returncode

    return vmscripts.around(run_script, run_in, user_dir)
