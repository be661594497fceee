"""Stand-in for Torque's pbs_mom and pbs_server, for tests: Torque cannot run here.

Written from the project's torque-contract reference (mom_priv scripts, positional
arguments, environment, $prologalarm, exit status effects) and kept small. It plays, for
1..N simulated nodes on this machine:
- pbs_server: turns a recorded `qsub` call (tests/standins/recording_qsub) into a job in the
  stand-in qstat's database, with exec_host over the simulated nodes;
- the moms: runs the *installed* mom_priv scripts (contrib/torque_hooks/install) —
  `prologue.parallel` on sisters and `prologue` on the mother superior as root with
  Torque's positional arguments and a near-empty environment, killed after $prologalarm
  (result -4); exit 0 runs the job, 1 aborts it, anything else requeues it;
- the job: the job's shell (qsub -S) as the job owner with the script on stdin and the
  PBS_* environment, inside the test network namespace where the node "lives", stdout
  and stderr to the job's output files;
- the end: `epilogue.parallel` on sisters and `epilogue` on the mother superior with
  Torque's epilogue arguments ($10 = the job's exit status).
"""

from __future__ import annotations

import json
import pwd
import random
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.standins import read_db, write_db

DEFAULT_PROLOGALARM = 300
TIMEOUT_RESULT = -4
# Torque 6 sets only these for prologue and epilogue (plus a few MOAB_* we leave out).
HOOK_ENV_KEYS = ("PBS_NODEFILE", "PBS_MSHOST", "PBS_NODENUM", "PBS_NUM_NODES", "PBS_NUM_PPN",
                 "PBS_NP", "PBS_O_WORKDIR", "TMPDIR")


@dataclass
class SimNode:
    name: str
    mom_priv: Path
    config: Path
    # Each real node has the job shell at the same path with its own config; simulated
    # nodes share one file system, so each keeps its copy here and the mom maps to it.
    job_shell: Path | None = None
    shared_job_shell: str | None = None


@dataclass
class JobRun:
    job_id: str
    prologue: dict[str, int] = field(default_factory=dict)   # node -> exit status
    prologue_output: str = ""
    started: bool = False
    exit_status: int | None = None
    stdout: str = ""
    stderr: str = ""
    epilogue: dict[str, int] = field(default_factory=dict)

    @property
    def action(self) -> str:
        """What Torque does after the prologues: run, abort or requeue."""
        statuses = list(self.prologue.values())
        if all(s == 0 for s in statuses):
            return "run"
        if any(s not in (0, 1) for s in statuses):
            return "requeue"
        return "abort"


class TorqueHarness:
    def __init__(self, nodes: list[SimNode], db: Path, netns: str, workdir: Path,
                 prologalarm: int = DEFAULT_PROLOGALARM, hook_env: dict | None = None):
        self.nodes = nodes
        self.db = db
        self.netns = netns
        self.workdir = workdir
        self.prologalarm = prologalarm
        self.hook_env = hook_env or {}
        # Job numbers unique to this harness: simulated clusters share one libvirtd.
        self._next = random.randrange(10000, 90000) * 10

    # --- pbs_server ---------------------------------------------------------------
    def submit(self, qsub_argv: list[str], script: str, user: str,
               job_id: str | None = None, ppn: int = 2) -> dict:
        """Create the job a real server would from this qsub call (options we need)."""
        opts = _parse_qsub(qsub_argv[1:])
        account = pwd.getpwnam(user)
        job_id = job_id or f"{self._next}.standin"
        self._next += 1
        variables = {"PBS_O_WORKDIR": str(self.workdir), "PBS_O_HOME": account.pw_dir,
                     "PBS_O_LOGNAME": user, "PBS_O_QUEUE": "batch"}
        variables.update(opts["v"])
        job = {
            "Job_Name": opts.get("N", "STDIN"), "Job_Owner": f"{user}@standin",
            "euser": user, "egroup": _group_name(account.pw_gid), "queue": "batch",
            "job_state": "R", "run_count": 1,
            "exec_host": "+".join(f"{n.name}/0-{ppn - 1}" for n in self.nodes),
            "Resource_List": opts["l"], "Variable_List": variables,
            "Shell_Path_List": opts.get("S", "/bin/sh"),
        }
        data = read_db(self.db)
        data.setdefault("jobs", {})[job_id] = job
        write_db(self.db, data)
        return {"id": job_id, "script": script, **job}

    def set_job(self, job_id: str, **fields) -> None:
        data = read_db(self.db)
        data["jobs"][job_id].update(fields)
        write_db(self.db, data)

    # --- pbs_mom ------------------------------------------------------------------
    def _hook(self, node: SimNode, script: str, args: list[str]) -> tuple[int, str]:
        path = node.mom_priv / script
        env = {k: v for k, v in self.hook_env.items()}
        env.setdefault("PBS_MSHOST", self.nodes[0].name)
        try:
            done = subprocess.run([str(path), *args], env=env, capture_output=True, text=True,
                                  timeout=self.prologalarm, cwd="/")
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else ""
            return TIMEOUT_RESULT, out
        return done.returncode, done.stdout + done.stderr

    def start(self, job: dict) -> JobRun:
        """Prologues on every node (sisters in parallel with the mother superior)."""
        run = JobRun(job["id"])
        args = [job["id"], job["euser"], job["egroup"], job["Job_Name"],
                _resources(job["Resource_List"]), job["queue"], "",
                str(self.workdir / "job.SC"), ",".join(n.name for n in self.nodes)]
        roles = [(self.nodes[0], "prologue")] + [(n, "prologue.parallel")
                                                  for n in self.nodes[1:]]
        with ThreadPoolExecutor(max_workers=len(roles)) as pool:
            results = list(pool.map(lambda r: (r[0].name, *self._hook(r[0], r[1], args)),
                                    roles))
        for name, status, output in results:
            run.prologue[name] = status
            run.prologue_output += output
        return run

    def execute(self, job: dict, run: JobRun, timeout: float = 300) -> JobRun:
        """The job's shell as the job owner, in the node's network namespace."""
        account = pwd.getpwnam(job["euser"])
        env = {
            "HOME": account.pw_dir, "USER": job["euser"], "LOGNAME": job["euser"],
            "PATH": "/usr/local/bin:/usr/bin:/bin", "SHELL": job["Shell_Path_List"],
            "PBS_JOBID": job["id"], "PBS_JOBNAME": job["Job_Name"],
            "PBS_O_WORKDIR": str(self.workdir), "PBS_NODEFILE": "/var/spool/torque/aux/"
            + job["id"], "PBS_NUM_NODES": str(len(self.nodes)), "PBS_QUEUE": job["queue"],
            "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_O_HOST": "standin",
        }
        for key, value in job["Variable_List"].items():
            env.setdefault(key, value)
        shell = job["Shell_Path_List"]
        mother = self.nodes[0]
        if mother.job_shell and shell == mother.shared_job_shell:
            shell = str(mother.job_shell)
        argv = ["ip", "netns", "exec", self.netns, "setpriv", f"--reuid={account.pw_uid}",
                f"--regid={account.pw_gid}", "--init-groups", "--",
                "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in env.items()], shell]
        done = subprocess.run(argv, input=job["script"], capture_output=True, text=True,
                              timeout=timeout, cwd=account.pw_dir)
        run.started = True
        run.exit_status = done.returncode
        run.stdout, run.stderr = done.stdout, done.stderr
        return run

    def finish(self, job: dict, run: JobRun) -> JobRun:
        """Epilogues on every node."""
        status = str(run.exit_status if run.exit_status is not None else -14)
        args = [job["id"], job["euser"], job["egroup"], job["Job_Name"], "0",
                _resources(job["Resource_List"]), "cput=00:00:00", job["queue"], "",
                status, str(self.workdir / "job.SC")]
        roles = [(self.nodes[0], "epilogue")] + [(n, "epilogue.parallel")
                                                  for n in self.nodes[1:]]
        with ThreadPoolExecutor(max_workers=len(roles)) as pool:
            for name, code, _ in pool.map(lambda r: (r[0].name, *self._hook(r[0], r[1], args)),
                                          roles):
                run.epilogue[name] = code
        return run

    def run(self, job: dict) -> JobRun:
        """A whole job: prologues, the job when they allow it, epilogues always."""
        run = self.start(job)
        if run.action == "run":
            self.execute(job, run)
        return self.finish(job, run)


def _parse_qsub(args: list[str]) -> dict:
    """The few qsub options the stand-in server needs: -v, -l, -N, -S, -q."""
    opts: dict = {"v": {}, "l": {}}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-v", "-l", "-N", "-S", "-q") and i + 1 < len(args):
            value = args[i + 1]
            if arg == "-v":
                for item in _split_unescaped(value):
                    key, _, val = item.partition("=")
                    opts["v"][key] = val
            elif arg == "-l":
                for item in _split_unescaped(value):
                    key, _, val = item.partition("=")
                    opts["l"][key] = val
            else:
                opts[arg[1]] = value
            i += 2
        else:
            i += 1
    return opts


def _split_unescaped(text: str) -> list[str]:
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur += text[i + 1]
            i += 2
            continue
        if text[i] == ",":
            parts.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    parts.append(cur)
    return [p for p in parts if p]


def _resources(resources: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in resources.items())


def _group_name(gid: int) -> str:
    import grp
    return grp.getgrgid(gid).gr_name


def load_calls(db: Path) -> list[dict]:
    path = Path(str(db) + ".calls")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def shell_quote(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
