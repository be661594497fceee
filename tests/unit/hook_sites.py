"""One test site per batch system for the hook contract suite (test_hook_contract.py): a
config, the scheduler's stand-in commands (tests/standins) with one job in their DB, and
the scheduler's own way of calling vtorque's hook (Torque: mom_priv arguments, the node
from the config; OpenPBS: JOBID USER ROLE NODE; Slurm: SLURM_* variables).

What a hook did is read back in the scheduler's own terms and told in neutral ones:
`verdict()` is run, abort or requeue, `offline()` the nodes taken out of service."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.standins import calls, install, read_db
from vtorque import hooks

class Guests:
    """guests.bring_up and write_user_files as recorders: one fake guest per node. Each
    call records its arguments, the request's vcpus and RAM, and whether the job's mark
    was on the node when the guests would have been made; `error` makes bring_up fail."""

    def __init__(self, monkeypatch):
        from vtorque.mpi import sshkeys
        from vtorque.prologue import guests
        self.calls: list[dict[str, Any]] = []
        self.error: Exception | None = None
        monkeypatch.setattr(guests, "bring_up", self.bring_up)
        monkeypatch.setattr(guests, "write_user_files", lambda *a, **k: "/nowhere")
        # The sites' owners have no account here: the server's uid stands in for the
        # node's (the creation time is still required, from the site's record).
        real_scope = sshkeys.scope_for
        monkeypatch.setattr(sshkeys, "scope_for", lambda job_id, user, created, uid=None:
                            real_scope(job_id, user, created, 1001 if uid is None else uid))

    def bring_up(self, job_id, request, config, *, user, node_index=0, node_count=1,
                 node=None, run=0, workdir=None, keys=None, job_cores=None):
        from types import SimpleNamespace

        from vtorque import markers
        self.calls.append({"job": job_id, "user": user, "index": node_index,
                           "count": node_count, "node": node, "workdir": workdir,
                           "keys": keys, "marked": markers.marked(config, job_id),
                           "vcpus": request.vcpus, "ram": request.ram_mib})
        if self.error is not None:
            raise self.error
        guest = SimpleNamespace(rank=node_index, name=f"vt-{node_index}",
                                hostname=f"vm{node_index}", mac="52:54:00:00:00:01",
                                address=None, ready_seconds=0.5, started="boot")
        return SimpleNamespace(guests=[guest], seconds=0.1, restored=0, image_kind="kernel",
                               image_name="testguest", image_digest="0" * 64,
                               rdma=None), []


JOB_IDS = {"torque": "17.head", "openpbs": "42.pbs", "slurm": "42"}
NODES = ("n1", "n2")


class Site:
    scheduler = ""
    query = ""                  # the stand-in program the hook reads the job with
    # What a sister's own failure makes of its start: Torque's and OpenPBS's sisters only
    # report (the mother superior decides), Slurm's fails its own Prolog.
    sister_fault = "run"
    start_queries = {"n1": 1, "n2": 1}      # how often a start reads the job

    def __init__(self, tmp: Path, config_data: dict[str, Any]):
        self.tmp = tmp
        self.job_id = JOB_IDS[self.scheduler]
        self.bin_dir = tmp / f"{self.scheduler}-bin"
        self.job_shell = tmp / "job-shell"
        self.data = dict(config_data, node_name="n1", log_file=str(tmp / "log" / "vt.log"),
                         batch={"system": self.scheduler, "bin_dir": str(self.bin_dir),
                                "shared_state_dir": str(tmp / "shared"),
                                "job_shell": str(self.job_shell), "max_requeues": 3},
                         # A silent node fails the start after this long.
                         timeouts={"provision": 3}, hypervisor="qemu")
        secret = tmp / "secret"
        secret.write_bytes(bytes(range(32)))
        secret.chmod(0o600)
        self.data["secret_file"] = str(secret)
        self.config = tmp / "vtorque.yaml"
        self.write_config()
        self.db = install(self.scheduler, self.bin_dir, jobs={})

    # -- the site ------------------------------------------------------------------------------
    def write_config(self, **overrides: Any) -> None:
        data = dict(self.data)
        for key, value in overrides.items():
            data[key] = dict(data.get(key, {}), **value) if isinstance(value, dict) else value
        self.data = data
        self.config.write_text(yaml.safe_dump(data))

    def set_job(self, vm: str | None = "vcpus=1", *, user: str = "alice", runs: int = 1,
                nodes: tuple[str, ...] = NODES, **fail: Any) -> None:
        """The server knows the job (vm None: a job without VM requests)."""
        self.db = install(self.scheduler, self.bin_dir,
                          jobs={self.job_id: self.record(vm, user, runs, nodes)}, **fail)

    def no_job(self) -> None:
        self.db = install(self.scheduler, self.bin_dir, jobs={})

    def server_down(self) -> None:
        self.db = install(self.scheduler, self.bin_dir, jobs={}, fail={self.query: {
            "exit": 1, "stderr": f"{self.query}: cannot connect to server head\n"}})

    # -- calling the hook ------------------------------------------------------------------
    def start(self, node: str = "n1", user: str = "alice", job_id: str | None = None) -> int:
        """The job's start on `node` (n1 is the mother superior)."""
        raise NotImplementedError

    def end(self, node: str = "n1", job_id: str | None = None) -> int:
        raise NotImplementedError

    def failure_status(self, start: bool) -> int:
        """The exit status of a hook that could not do its job."""
        return 2 if start else 1

    # -- what happened ---------------------------------------------------------------------
    def verdict(self, status: int) -> str:
        return {0: "run", 1: "abort", 2: "requeue"}[status]

    record_attribute = "comment"
    end_offlined = 1        # the end's status when a teardown failed and the node is out

    def job_record(self) -> str:
        """What the job's record at the server says (qstat -f comment, AdminComment)."""
        return read_db(self.db)["jobs"].get(self.job_id, {}).get(self.record_attribute, "")

    def offline(self) -> list[str]:
        nodes = read_db(self.db)["nodes"]
        return sorted(n for n, v in nodes.items() if v.get("state") in ("offline", "drain"))

    def queries(self) -> int:
        return sum(1 for c in calls(self.db) if c["prog"] == self.query)

    def programs(self) -> list[str]:
        return [c["prog"] for c in calls(self.db)]


class TorqueSite(Site):
    scheduler = "torque"
    query = "qstat"

    def record(self, vm, user, runs, nodes):
        variables = {"PBS_O_WORKDIR": f"/home/{user}/run"}
        if vm is not None:
            variables["VTORQUE_VM"] = vm
        return {"Job_Name": "vmjob", "Job_Owner": f"{user}@login1", "euser": user,
                "egroup": "hpc", "job_state": "R", "queue": "batch",
                "exec_host": "+".join(f"{n}/0-1" for n in nodes), "start_count": str(runs),
                "ctime": "1796170623",
                "Resource_List": {"nodes": f"{len(nodes)}:ppn=2"},
                "Variable_List": variables}

    end_offlined = 0        # the real mom would mark the node down over vtorque's note

    def failure_status(self, start: bool) -> int:
        """The mother superior aborts: the real server requeues a failing prologue
        forever (reference/real-pbs.md), and without a usable config there is no count."""
        return 1

    def _call(self, event: str, node: str, args: list[str]) -> int:
        if self.data.get("node_name") != node:
            self.write_config(node_name=node)
        return hooks.main("torque", event, args, str(self.config))

    def start(self, node="n1", user="alice", job_id=None):
        event = "prologue" if node == "n1" else "prologue.parallel"
        return self._call(event, node, [job_id or self.job_id, user, "hpc", "vmjob",
                                        "nodes=2:ppn=2", "", "batch", "", "/home/alice"])

    def end(self, node="n1", job_id=None):
        event = "epilogue" if node == "n1" else "epilogue.parallel"
        return self._call(event, node, [job_id or self.job_id, "alice", "hpc", "vmjob",
                                        "0", "", "", "batch", "", "0", "/home/alice"])


class OpenPBSSite(Site):
    scheduler = "openpbs"
    query = "qstat"

    def __init__(self, tmp: Path, config_data: dict[str, Any]):
        super().__init__(tmp, config_data)
        self.offlined: set[str] = set()
        self.notes: list[str] = []

    def record(self, vm, user, runs, nodes):
        variables = {"PBS_O_WORKDIR": f"/home/{user}/run"}
        if vm is not None:
            variables["VTORQUE_VM"] = vm
        return {"Job_Name": "vmjob", "Job_Owner": f"{user}@login1", "euser": user,
                "egroup": "hpc", "job_state": "R", "queue": "workq",
                "exec_host": "+".join(f"{n}/0*2" for n in nodes), "run_count": runs,
                "ctime": "Tue Dec  1 23:41:54 2026",
                "Resource_List": {"ncpus": 2 * len(nodes), "nodect": len(nodes)},
                "Variable_List": variables}

    start_queries = {"n1": 2, "n2": 1}      # execjob_begin, then the primary's prologue

    def start(self, node="n1", user="alice", job_id=None):
        """execjob_begin on the node (every node provisions), then on the primary MoM its
        execjob_prologue (which decides) and on a sister its prologue (nothing)."""
        import contextlib
        import io
        role = "ms" if node == "n1" else "sister"
        args = [job_id or self.job_id, user, role, node]
        if role == "sister":
            return self._status(node, hooks.main("openpbs", "begin", args, str(self.config)))
        # The primary's begin only reports; what people read is its prologue's line. A
        # begin that fails (an internal error) is rejected by the hook: it ends the start.
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            begin = self._status(node, hooks.main("openpbs", "begin", args,
                                                  str(self.config)))
        if begin != 0:
            sys.stderr.write(err.getvalue())
            return begin
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = hooks.main("openpbs", "prologue", args, str(self.config))
        self._take_note(out.getvalue())
        return self._status(node, status)

    def _take_note(self, stdout: str) -> None:
        """What the hook script does with vtorque's note line: the job's comment."""
        from vtorque.hooks.openpbs import NOTE_PREFIX
        for line in stdout.splitlines():
            if line.startswith(NOTE_PREFIX):
                self.notes.append(line[len(NOTE_PREFIX):])

    def job_record(self) -> str:
        return self.notes[-1] if self.notes else ""

    def _status(self, node: str, status: int) -> int:
        """What the hook script does with vtorque's status: the OFFLINE bit takes this
        MoM's vnodes offline (through the event), the rest is accept/reject."""
        from vtorque.hooks.openpbs import OFFLINE
        if status & OFFLINE:
            self.offlined.add(node)
        return status & ~OFFLINE

    def offline(self) -> list[str]:
        return sorted(set(super().offline()) | self.offlined)

    def end(self, node="n1", job_id=None):
        role = "ms" if node == "n1" else "sister"
        return hooks.main("openpbs", "end", [job_id or self.job_id, "alice", role, node],
                          str(self.config))


class SlurmSite(Site):
    scheduler = "slurm"
    query = "scontrol"
    sister_fault = "requeue"
    record_attribute = "AdminComment"

    def record(self, vm, user, runs, nodes):
        job = {"JobName": "vmjob", "UserId": f"{user}(1001)", "GroupId": "hpc(100)",
               "JobState": "RUNNING", "Reason": "Prolog", "Partition": "batch",
               "NodeList": ",".join(nodes), "NumCPUs": 4,
               "CPU_IDs": {n: "0-1" for n in nodes}, "Restarts": runs - 1,
               "WorkDir": f"/home/{user}/run", "SubmitTime": "2026-11-24T03:56:10"}
        if vm is not None:
            job["Comment"] = f"vtorque:{vm}"
        return job

    def env(self, node: str, job_id: str | None) -> dict[str, str]:
        return {"SLURM_JOB_ID": job_id or self.job_id, "SLURM_JOB_USER": "alice",
                "SLURMD_NODENAME": node, "SLURM_JOB_NODELIST": ",".join(NODES)}

    def start(self, node="n1", user="alice", job_id=None):
        env = dict(self.env(node, job_id), SLURM_JOB_USER=user)
        return hooks.main("slurm", "prolog", [], str(self.config), environ=env)

    def end(self, node="n1", job_id=None):
        return hooks.main("slurm", "epilog", [], str(self.config),
                          environ=self.env(node, job_id))

    def failure_status(self, start):
        return 1

    def verdict(self, status):
        if status != 0:
            return "requeue"                 # Slurm requeues the job held
        job = read_db(self.db)["jobs"].get(self.job_id, {})
        if job.get("JobState") == "CANCELLED":
            return "abort"
        if job.get("JobState") == "PENDING":
            return "requeue"                 # requeuehold from the mother superior
        return "run"


SITES = {"torque": TorqueSite, "openpbs": OpenPBSSite, "slurm": SlurmSite}


# -- the fixtures the hook suites share (test_hook_contract.py, test_wiring.py import them)
@pytest.fixture(params=sorted(SITES))
def site(request: pytest.FixtureRequest, tmp_path: Path, config_data: dict[str, Any]) -> Site:
    """Every batch system's site in turn."""
    return SITES[request.param](tmp_path, config_data)


@pytest.fixture
def guests(monkeypatch: pytest.MonkeyPatch) -> Guests:
    return Guests(monkeypatch)


def site_config(site: Site):
    """The site's config as the hooks load it."""
    from vtorque import config as config_mod
    return config_mod.load(str(site.config))
