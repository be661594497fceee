"""The one way vtorque runs a subprocess.

argv lists only (never a shell string), a timeout always, the child in its own process
group so a timeout kills everything it started, and a clean environment unless the caller
passes one: hooks run as root and must not inherit LD_PRELOAD, PATH and friends.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vtorque.errors import CommandError

# A fixed PATH for the root side; the caller's PATH is never trusted.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: fixed PATH, C locale, plus what the caller adds."""
    env = {"PATH": SAFE_PATH, "LC_ALL": "C", "LANG": "C"}
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def run(argv: Sequence[str], *, timeout: float | None, check: bool = True,
        env: Mapping[str, str] | None = None, input: str | None = None,
        cwd: str | None = None, capture: bool = True) -> Completed:
    """Run argv, wait at most `timeout` seconds, return its output.

    Raises CommandError on timeout (after killing the whole process group) and, when
    `check` is true, on a non-zero exit status. With capture=False the child writes
    straight to our stdout and stderr (a job's output streaming to the batch system's
    spool); `timeout` None waits as long as it runs (the batch system's walltime rules).
    """
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("empty argv")
    pipe = subprocess.PIPE if capture else None
    try:
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=pipe, stderr=pipe, text=True, errors="replace",
            env=dict(env) if env is not None else clean_env(), cwd=cwd,
            start_new_session=True)
    except OSError as exc:
        raise CommandError(argv, None, "", f"cannot execute: {exc.strerror}") from exc
    try:
        out, err = child.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(child.pid)
        out, err = child.communicate()
        raise CommandError(argv, None, out or "", err or "", timed_out=True) from None
    except BaseException:
        _kill_group(child.pid)
        child.wait()
        raise
    out, err = out or "", err or ""
    if check and child.returncode != 0:
        raise CommandError(argv, child.returncode, out, err)
    return Completed(argv, child.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
