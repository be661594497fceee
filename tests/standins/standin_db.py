"""Shared state of the batch-system stand-ins (STAND-IN CODE, stdlib only).

The executables in tests/standins/<scheduler>/ imitate Torque's and OpenPBS's commands
from their documented contract (reference/torque-contract.md, reference/samples/). They
keep the "server" in one JSON file, the DB:

    {"jobs":  {"<job id>": {"<attribute>": value, ...}, ...},
     "nodes": {"<name>": {"state": "free|offline", "note": "...", "comment": "..."}},
     "fail":  {"<prog>": {"exit": 1, "stderr": "...", "stdout": "..."}},   # optional
     "delay": {"<prog>": seconds},                     # optional: a hanging server
     "torque_version": "6.1.2", "pbs_version": "23.06.06"}                # optional

A flat {"<job id>": {...}} is read as {"jobs": {...}}. Where the DB is:
1. $VTORQUE_STANDIN_DB, else
2. the path written in `db.path` next to the invoked stand-in (hooks run with a clean
   environment, so tests put the stand-ins in a per-test bin dir with its own db.path), else
3. `db.path` next to the stand-in's real file.
Every invocation appends one JSON line {"prog": name, "argv": [name, args...]} to
`<DB>.calls`. Changes to the DB are made under an flock on `<DB>.lock` and written
atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from typing import Any

ENV = "VTORQUE_STANDIN_DB"


def db_path(argv0: str, real_file: str) -> str:
    if os.environ.get(ENV):
        return os.environ[ENV]
    for folder in (os.path.dirname(os.path.abspath(argv0)),
                   os.path.dirname(os.path.realpath(real_file))):
        marker = os.path.join(folder, "db.path")
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                path = f.read().strip()
            if path:
                return path
    sys.stderr.write(f"stand-in {os.path.basename(argv0)}: no DB (set ${ENV} or write "
                     "db.path next to the stand-in)\n")
    sys.exit(2)


def normalize(data: Any) -> dict:
    if not isinstance(data, dict):
        data = {}
    if "jobs" not in data and all(isinstance(v, dict) for v in data.values()) and not (
            set(data) & {"nodes", "fail", "torque_version", "pbs_version"}):
        data = {"jobs": data}
    data.setdefault("jobs", {})
    data.setdefault("nodes", {})
    return data


def load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return normalize(json.load(f))
    except FileNotFoundError:
        return normalize({})


def save(path: str, data: dict) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


@contextmanager
def locked(path: str):
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def record_call(path: str, prog: str, args: list[str]) -> None:
    line = json.dumps({"prog": prog, "argv": [prog, *args]})
    with locked(path), open(path + ".calls", "a", encoding="utf-8") as f:
        f.write(line + "\n")


def start(argv0: str, real_file: str, args: list[str]) -> tuple[str, str, dict]:
    """Common prologue of every stand-in: find the DB, log the call, apply an injected
    delay and failure. Returns (prog, db path, db)."""
    prog = os.path.basename(argv0)
    path = db_path(argv0, real_file)
    record_call(path, prog, args)
    data = load(path)
    delay = data.get("delay", {}).get(prog)
    if delay:
        time.sleep(float(delay))
    fail = data.get("fail", {}).get(prog)
    if fail:
        sys.stdout.write(fail.get("stdout", ""))
        sys.stderr.write(fail.get("stderr", ""))
        sys.exit(int(fail.get("exit", 1)))
    return prog, path, data


def find_job(jobs: dict, job_id: str) -> str | None:
    """The server completes a short id with its own name: 150 -> 150.server."""
    if job_id in jobs:
        return job_id
    longer = [k for k in jobs if k.startswith(job_id + ".")]
    return longer[0] if len(longer) == 1 else None
