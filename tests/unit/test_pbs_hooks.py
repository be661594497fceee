"""OpenPBS / PBS Professional hooks: the contract tests (no PBS server can run here).

1. contrib/pbs_hooks/vtorque_hook.py, run with exec() under a stand-in `pbs` module written
   from the documented hook interface (tests/standins/pbs_module/pbs.py) for every event,
   with vtorque replaced by a recorded fake command whose exit status, output and delay
   each test picks: the accept/reject mapping, delete vs rerun, launch rewriting only for
   the first task of VM jobs, the arguments and environment passed, timeouts, offlining,
   and that no event value reaches a shell.
2. contrib/pbs_hooks/install.sh: rendering the hook and the qmgr commands.
3. vtorque/pbs_hooks.py main() against the OpenPBS stand-ins (tests/standins/openpbs):
   the job is read back from the "server"; no guest is ever booted.
4. Both together: the hook calling vtorque's side through a bridge interpreter.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.standins import calls, install
from vtorque import hooks

ROOT = Path(__file__).resolve().parents[2]
HOOK = ROOT / "contrib" / "pbs_hooks" / "vtorque_hook.py"
INSTALL = ROOT / "contrib" / "pbs_hooks" / "install.sh"
PBS_MODULE = ROOT / "tests" / "standins" / "pbs_module" / "pbs.py"
CONFIG = "/etc/vtorque/vtorque.yaml"
SHELL = "/usr/local/libexec/vtorque/job-shell"
JOB = "42.pbs"


# --- helpers: the stand-in pbs module, the fake vtorque, running the hook ----------------

def render(python: str, config: str = CONFIG, alarm: int = 540) -> str:
    """The hook as install.sh renders it (the same three line substitutions)."""
    out = []
    for line in HOOK.read_text(encoding="ascii").splitlines(keepends=True):
        if line.startswith("VTORQUE_PYTHON = "):
            line = f'VTORQUE_PYTHON = "{python}"\n'
        elif line.startswith("VTORQUE_CONFIG = "):
            line = f'VTORQUE_CONFIG = "{config}"\n'
        elif line.startswith("HOOK_ALARM = "):
            line = f"HOOK_ALARM = {alarm}\n"
        out.append(line)
    return "".join(out)


@pytest.fixture
def pbs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A fresh stand-in `pbs` module as `import pbs` sees it; PBS_HOME in tmp_path."""
    spec = importlib.util.spec_from_file_location("pbs", PBS_MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "pbs", module)
    home = tmp_path / "pbs_home"
    (home / "mom_priv" / "jobs").mkdir(parents=True)
    module.pbs_conf["PBS_HOME"] = str(home)
    return module


FAKE = """\
#!{python}
# Fake vtorque (tests only): records its call, then behaves as {behavior} says.
import json, os, subprocess, sys, time
with open({record!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}})
            + "\\n")
with open({behavior!r}) as f:
    b = json.load(f)
if b.get("sleep"):
    grandchild = subprocess.Popen(["sleep", str(b["sleep"])])
    with open({pids!r}, "w") as f:
        json.dump([os.getpid(), grandchild.pid], f)
    time.sleep(b["sleep"])
sys.stdout.write(b.get("stdout", ""))
sys.stderr.write(b.get("stderr", ""))
sys.exit(b.get("exit", 0))
"""


class Fake:
    """An executable standing in for VTORQUE_PYTHON."""

    def __init__(self, tmp: Path):
        self.path = tmp / "fake-vtorque"
        self.record = tmp / "fake-calls.jsonl"
        self.behavior = tmp / "fake-behavior.json"
        self.pids = tmp / "fake-pids.json"
        self.path.write_text(FAKE.format(python=sys.executable, record=str(self.record),
                                         behavior=str(self.behavior), pids=str(self.pids)))
        self.path.chmod(0o755)
        self.set()

    def set(self, exit: int = 0, stdout: str = "", stderr: str = "", sleep: float = 0) -> None:
        self.behavior.write_text(json.dumps({"exit": exit, "stdout": stdout,
                                             "stderr": stderr, "sleep": sleep}))

    def calls(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def make_event(pbs, kind: str, *, job_id: str = JOB, euser: str | None = "alice",
               owner: str | None = "alice@login1", vm: str | None = "img=deb12;vcpus=2",
               ms: bool = True, env: dict | None = None, tasknum: str | None = "1",
               vnodes: tuple[str, ...] = ("node1",)):
    variables = {"PBS_O_WORKDIR": "/home/alice/run"}
    if vm is not None:
        variables["VTORQUE_VM"] = vm
    job = pbs.Job(job_id, euser=euser, owner=owner, variables=variables, ms=ms)
    job_env = dict(variables, PBS_JOBID=job_id, HOME="/home/alice")
    if tasknum is not None:
        job_env["PBS_TASKNUM"] = tasknum
    job_env.update(env or {})
    return pbs.Event(pbs.EVENT_NAMES[f"execjob_{kind}"], job, progname="/bin/bash",
                     argv=["-bash"], env=job_env,
                     vnode_list={name: pbs.Vnode(name) for name in vnodes})


def run_hook(pbs, source: str, event, local_node: str = "node1"):
    """Run the hook body as pbs_mom does: a fresh namespace, the event set; accept() and
    reject() end it with SystemExit."""
    pbs.set_event(event, local_node=local_node)
    namespace: dict[str, Any] = {"__name__": "vtorque_hook"}
    try:
        exec(compile(source, str(HOOK), "exec"), namespace)
    except SystemExit:
        pass
    return namespace


def hook_argv(fake: Fake, kind: str, user: str = "alice", role: str = "ms",
              job_id: str = JOB, node: str = "node1") -> list[str]:
    return [str(fake.path), "-E", "-s", "-m", "vtorque.hooks", "--config", CONFIG,
            "openpbs", kind, job_id, user, role, node]


# --- 1. the hook script -------------------------------------------------------------------

def test_hook_is_ascii_and_valid_python_2_and_3() -> None:
    data = HOOK.read_bytes()
    data.decode("ascii")                         # qmgr imports it as 7-bit "default"
    compile(data, str(HOOK), "exec")
    found = 0
    for version in ("2.7", "3.6"):
        exe = _interpreter(version)
        if exe is None:
            continue
        found += 1
        done = subprocess.run([exe, "-c", "import sys; compile(open(sys.argv[1]).read(), "
                               "sys.argv[1], 'exec')", str(HOOK)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (version, done.stderr)
    if not found:
        pytest.skip("no Python 2.7 or 3.6 interpreter here to check compatibility")


def _interpreter(version: str) -> str | None:
    """A working python<version> (pyenv's versions first: its shims may refuse)."""
    candidates = [str(p) for p in sorted(Path("/root/.pyenv/versions").glob(
        f"{version}.*/bin/python"))]
    which = shutil.which(f"python{version}")
    for exe in candidates + ([which] if which else []):
        try:
            done = subprocess.run([exe, "-c", "pass"], capture_output=True, timeout=30)
        except OSError:
            continue
        if done.returncode == 0:
            return exe
    return None


def test_hook_never_uses_a_shell() -> None:
    text = HOOK.read_text()
    for banned in ("shell=True", "os.system", "os.popen", "commands.", "pbs.reboot"):
        assert banned not in text


@pytest.mark.parametrize("kind, ms, role", [("prologue", True, "ms"), ("begin", True, "ms"),
                                            ("begin", False, "sister")])
def test_start_events_accept_on_0_with_the_documented_argv_and_a_clean_env(
        pbs, fake: Fake, kind: str, ms: bool, role: str) -> None:
    event = make_event(pbs, kind, ms=ms)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    [call] = fake.calls()
    assert call["argv"] == hook_argv(fake, kind, role=role)
    assert call["cwd"] == "/"
    env = {k: v for k, v in call["env"].items() if k != "LC_CTYPE"}
    assert env == {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    assert not event.job.delete_requested and not event.job.rerun_requested


def test_a_sisters_prologue_needs_no_vtorque(pbs, fake: Fake) -> None:
    """Its guests came up in execjob_begin; the primary's prologue decides."""
    event = make_event(pbs, "prologue", ms=False)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True and fake.calls() == []


@pytest.mark.parametrize("kind", ["begin", "prologue", "launch"])
def test_this_nodes_fault_takes_its_vnodes_offline(pbs, fake: Fake, kind: str) -> None:
    """vtorque's status plus OFFLINE (8): the event offlines this MoM's vnodes (no server
    privileges needed); begin still accepts (it only reports), the prologue and launch
    requeue."""
    from vtorque.hooks.openpbs import OFFLINE
    fake.set(exit=OFFLINE + (0 if kind == "begin" else 2),
             stderr="vtorque: node node1 failed to start the job's guests: disk full\n")
    event = make_event(pbs, kind)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.vnode_list["node1"].state == pbs.ND_OFFLINE
    assert "disk full" in event.vnode_list["node1"].comment
    if kind == "begin":
        assert event.accepted is True and not event.job.rerun_requested
    else:
        assert event.accepted is False and event.job.rerun_requested


def test_prologue_user_error_deletes_the_job_instead_of_rerunning(pbs, fake: Fake) -> None:
    fake.set(exit=1, stderr="noise\nvtorque: job 42.pbs refused: vcpus=999 exceeds 64\n")
    event = make_event(pbs, "prologue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert event.reject_message == "vtorque: job 42.pbs refused: vcpus=999 exceeds 64"
    assert event.job.delete_requested and not event.job.rerun_requested
    assert (JOB, event.reject_message) in pbs.JOB_LOGS          # tracejob shows it


@pytest.mark.parametrize("status,accepted", [(0, True), (1, False), (2, False)])
def test_prologue_sets_the_jobs_comment_from_vtorques_note(pbs, fake: Fake, status: int,
                                                           accepted: bool) -> None:
    """The owner reads what the job runs on, or why it did not start, in qstat -f."""
    fake.set(exit=status, stdout="noise\nvtorque-note: vtorque: image=deb12 sha256=ab\x07\n",
             stderr="vtorque: job 42.pbs refused: x\n" if status else "")
    event = make_event(pbs, "prologue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is accepted
    assert event.job.comment == "vtorque: image=deb12 sha256=ab"     # control chars gone


@pytest.mark.parametrize("status", [2, 3, 127])
def test_prologue_node_fault_requeues(pbs, fake: Fake, status: int) -> None:
    fake.set(exit=status, stderr="vtorque: node n1 failed to start the job's guests: x\n")
    event = make_event(pbs, "prologue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert event.job.rerun_requested and not event.job.delete_requested
    assert event.vnode_list["node1"].state == pbs.ND_FREE       # a reject is not offline


def test_prologue_silent_failure_still_gets_a_message(pbs, fake: Fake) -> None:
    fake.set(exit=2)
    event = make_event(pbs, "prologue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.reject_message == ("vtorque prologue hook for job 42.pbs failed with exit "
                                    "status 2")


@pytest.mark.parametrize("kind", ["prologue", "launch"])
def test_non_vm_jobs_skip_vtorque(pbs, fake: Fake, kind: str) -> None:
    event = make_event(pbs, kind, vm=None)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    assert fake.calls() == []
    assert (event.progname, event.argv) == ("/bin/bash", ["-bash"])


def test_owner_from_job_owner_when_euser_is_unset(pbs, fake: Fake) -> None:
    event = make_event(pbs, "prologue", euser=None, owner="bob@login2.example")
    run_hook(pbs, render(str(fake.path)), event)
    assert fake.calls()[0]["argv"] == hook_argv(fake, "prologue", user="bob")


def test_hanging_vtorque_is_killed_and_the_job_requeued(pbs, fake: Fake) -> None:
    fake.set(sleep=60)
    event = make_event(pbs, "prologue")
    started = time.monotonic()
    run_hook(pbs, render(str(fake.path), alarm=3), event)       # MARGIN 1 s: timeout 2 s
    elapsed = time.monotonic() - started
    assert elapsed < 3, "the hook must end before PBS's alarm"
    assert event.accepted is False and event.job.rerun_requested
    assert event.reject_message == ("vtorque prologue hook for job 42.pbs did not finish "
                                    "within 2 s and was killed (hook alarm 3 s)")
    # The whole process group is gone, the grandchild too.
    for pid in json.loads(fake.pids.read_text()):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:
                os.waitpid(pid, os.WNOHANG)      # not our child: ECHILD, ignore
            except ChildProcessError:
                pass
            time.sleep(0.05)
        else:
            pytest.fail(f"process {pid} survived the timeout")


def test_prologue_offlines_the_node_when_vtorque_cannot_start(pbs, tmp_path: Path) -> None:
    event = make_event(pbs, "prologue", vnodes=("node1", "node1[0]", "node2"))
    run_hook(pbs, render(str(tmp_path / "no-such-python")), event)
    assert event.accepted is False and event.job.rerun_requested
    assert "cannot execute" in event.reject_message
    for name in ("node1", "node1[0]"):
        assert event.vnode_list[name].state == pbs.ND_OFFLINE
        assert event.vnode_list[name].comment.startswith("vtorque: cannot execute")
        assert len(event.vnode_list[name].comment) <= 200
    assert event.vnode_list["node2"].state == pbs.ND_FREE


def test_launch_rewrites_the_first_task_of_a_vm_job(pbs, fake: Fake) -> None:
    script = Path(pbs.pbs_conf["PBS_HOME"]) / "mom_priv" / "jobs" / f"{JOB}.SC"
    script.write_text("#!/bin/sh\nhostname\n")
    fake.set(stdout=SHELL + "\n")
    event = make_event(pbs, "launch")
    env_before = dict(event.env)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    assert event.progname == SHELL
    assert event.argv == [SHELL, str(script)]
    assert event.env == env_before
    assert fake.calls()[0]["argv"] == hook_argv(fake, "launch")


@pytest.mark.parametrize("ms, tasknum", [(False, "1"), (True, "40000001"), (True, "00000002"),
                                         (True, None)])
def test_launch_leaves_sisters_and_spawned_tasks_alone(pbs, fake: Fake, ms: bool,
                                                       tasknum: str | None) -> None:
    fake.set(stdout=SHELL + "\n")
    event = make_event(pbs, "launch", ms=ms, tasknum=tasknum)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    assert (event.progname, event.argv) == ("/bin/bash", ["-bash"])
    assert fake.calls() == []


def test_launch_keeps_the_program_when_the_server_says_no_vms(pbs, fake: Fake) -> None:
    fake.set(stdout="")                 # vtorque re-read the job: not a VM job after all
    event = make_event(pbs, "launch")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    assert (event.progname, event.argv) == ("/bin/bash", ["-bash"])
    assert len(fake.calls()) == 1


@pytest.mark.parametrize("status, deleted, rerun", [(1, True, False), (2, False, True)])
def test_launch_failures(pbs, fake: Fake, status: int, deleted: bool, rerun: bool) -> None:
    fake.set(exit=status, stderr="vtorque: job 42.pbs: something\n")
    event = make_event(pbs, "launch")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert (event.job.delete_requested, event.job.rerun_requested) == (deleted, rerun)
    assert (event.progname, event.argv) == ("/bin/bash", ["-bash"])


@pytest.mark.parametrize("stdout", ["job-shell\n", "/bin/sh -c 'id'\n", "/a/../etc/x\n"])
def test_launch_refuses_an_unusable_shell_and_holds(pbs, fake: Fake, stdout: str) -> None:
    fake.set(stdout=stdout)
    event = make_event(pbs, "launch")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert event.job.rerun_requested and event.job.Hold_Types == "s"
    assert event.progname == "/bin/bash"


def test_launch_without_the_job_script_holds_the_job(pbs, fake: Fake) -> None:
    fake.set(stdout=SHELL + "\n")
    event = make_event(pbs, "launch")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert event.job.rerun_requested and event.job.Hold_Types == "s"
    assert "job script of 42.pbs" in event.reject_message


def test_epilogue_does_nothing(pbs, fake: Fake) -> None:
    event = make_event(pbs, "epilogue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True and fake.calls() == []


@pytest.mark.parametrize("kind", ["end", "abort"])
@pytest.mark.parametrize("ms, role", [(True, "ms"), (False, "sister")])
def test_end_and_abort_always_tear_down(pbs, fake: Fake, kind: str, ms: bool,
                                        role: str) -> None:
    event = make_event(pbs, kind, vm=None, ms=ms)     # even when the event shows no VMs
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    assert fake.calls()[0]["argv"] == hook_argv(fake, kind, role=role)


def test_failed_teardown_offlines_this_moms_vnodes(pbs, fake: Fake) -> None:
    fake.set(exit=1, stderr="vtorque: teardown of job 42.pbs on node1 incomplete: busy\n")
    event = make_event(pbs, "end", vnodes=("node1", "node1[0]", "node1[1]", "node10"))
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert event.reject_message.startswith("vtorque: teardown of job 42.pbs")
    for name in ("node1", "node1[0]", "node1[1]"):
        assert event.vnode_list[name].state == pbs.ND_OFFLINE
        assert event.vnode_list[name].comment.startswith("vtorque: teardown of job 42.pbs")
    assert event.vnode_list["node10"].state == pbs.ND_FREE      # another host's vnode


def test_hanging_teardown_offlines(pbs, fake: Fake) -> None:
    fake.set(sleep=60)
    event = make_event(pbs, "end")
    run_hook(pbs, render(str(fake.path), alarm=3), event)
    assert event.accepted is False
    assert event.vnode_list["node1"].state == pbs.ND_OFFLINE


def test_end_without_vtorque_only_logs(pbs, tmp_path: Path) -> None:
    event = make_event(pbs, "end")
    run_hook(pbs, render(str(tmp_path / "missing")), event)
    assert event.accepted is False
    assert event.vnode_list["node1"].state == pbs.ND_FREE
    assert any("cannot execute" in message for _, message in pbs.LOGS)


def test_other_events_are_accepted_untouched(pbs, fake: Fake) -> None:
    event = make_event(pbs, "epilogue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True and fake.calls() == []


def test_pbs_without_execjob_abort(pbs, fake: Fake) -> None:
    del pbs.EXECJOB_ABORT                        # PBS Pro 18.x
    event = make_event(pbs, "prologue")
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True and len(fake.calls()) == 1


def test_control_flow_does_not_depend_on_accept_raising(pbs, fake: Fake,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    decisions: list[str] = []
    monkeypatch.setattr(pbs.Event, "accept", lambda self: decisions.append("accept"))
    monkeypatch.setattr(pbs.Event, "reject", lambda self, m="": decisions.append("reject"))
    run_hook(pbs, render(str(fake.path)), make_event(pbs, "prologue", vm=None))
    assert decisions == ["accept"] and fake.calls() == []
    fake.set(exit=1)
    run_hook(pbs, render(str(fake.path)), make_event(pbs, "prologue"))
    assert decisions == ["accept", "reject"]


# --- the hook under the interpreters PBS embeds (Pro 18/19: 2.7; OpenPBS 20+: 3.6+) -----

DRIVER = """\
import json, sys
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["standins"])
import pbs
job = pbs.Job(spec["job_id"], euser="alice", owner="alice@login1",
              variables=spec["variables"], ms=True)
ev = pbs.Event(pbs.EVENT_NAMES[spec["event"]], job, progname="/bin/bash", argv=["-bash"],
               env=spec["env"], vnode_list={"node1": pbs.Vnode("node1")})
pbs.pbs_conf["PBS_HOME"] = spec["home"]
pbs.set_event(ev, "node1")
source = open(spec["hook"]).read()
try:
    exec(compile(source, spec["hook"], "exec"), {"__name__": "vtorque_hook"})
except SystemExit:
    pass
print(json.dumps({"accepted": ev.accepted, "message": ev.reject_message,
                  "progname": ev.progname, "argv": ev.argv, "deleted": job.delete_requested,
                  "rerun": job.rerun_requested, "node1": ev.vnode_list["node1"].state}))
"""


@pytest.mark.parametrize("version", ["2.7", "3.6"])
def test_hook_runs_under_old_embedded_pythons(tmp_path: Path, fake: Fake, version: str) -> None:
    exe = _interpreter(version)
    if exe is None:
        pytest.skip(f"no Python {version} here")
    home = tmp_path / "pbs_home"
    (home / "mom_priv" / "jobs").mkdir(parents=True)
    (home / "mom_priv" / "jobs" / f"{JOB}.SC").write_text("hostname\n")
    hook = tmp_path / "hook.py"

    def run(event: str, alarm: int = 540, **behavior: Any) -> dict[str, Any]:
        hook.write_text(render(str(fake.path), alarm=alarm))
        fake.set(**behavior)
        spec = {"standins": str(PBS_MODULE.parent), "job_id": JOB, "event": event,
                "variables": {"VTORQUE_VM": "vcpus=2"}, "env": {"PBS_TASKNUM": "1"},
                "home": str(home), "hook": str(hook)}
        done = subprocess.run([exe, "-c", DRIVER, json.dumps(spec)], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert run("execjob_prologue")["accepted"] is True
    result = run("execjob_prologue", exit=1, stderr="vtorque: refused\n")
    assert (result["accepted"], result["deleted"], result["message"]) == (
        False, True, "vtorque: refused")
    result = run("execjob_prologue", alarm=3, sleep=30)
    assert (result["accepted"], result["rerun"]) == (False, True)
    assert "did not finish within 2 s" in result["message"]
    result = run("execjob_launch", stdout=SHELL + "\n")
    assert (result["progname"], result["argv"]) == (
        SHELL, [SHELL, str(home / "mom_priv" / "jobs" / f"{JOB}.SC")])
    result = run("execjob_end", exit=1, stderr="vtorque: teardown incomplete\n")
    assert (result["accepted"], result["node1"]) == (False, "offline")
    assert fake.calls()[-1]["argv"] == hook_argv(fake, "end")


# --- no event value reaches a shell -------------------------------------------------------

def test_hostile_vm_request_never_reaches_an_argv(pbs, fake: Fake, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    request = f"img=$(touch {marker});vcpus=`touch {marker}`"
    event = make_event(pbs, "prologue", vm=request)
    run_hook(pbs, render(str(fake.path)), event)
    [call] = fake.calls()
    assert call["argv"] == hook_argv(fake, "prologue")   # vtorque re-reads it from PBS
    assert not marker.exists()


@pytest.mark.parametrize("field, value", [
    ("euser", "alice;touch {m}"),
    ("euser", "$(touch {m})"),
    ("euser", "-rf"),
    ("job_id", "42.pbs;touch {m}"),
    ("job_id", "../../etc"),
    ("job_id", "-x"),
])
def test_hostile_event_values_are_refused(pbs, fake: Fake, tmp_path: Path, field: str,
                                          value: str) -> None:
    marker = tmp_path / "pwned"
    kwargs = {field: value.format(m=marker)}
    event = make_event(pbs, "prologue", **kwargs)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is False
    assert fake.calls() == []
    assert not marker.exists()


def test_hostile_owner_of_a_finished_job_still_tears_down(pbs, fake: Fake) -> None:
    event = make_event(pbs, "end", euser="x y", owner=None)
    run_hook(pbs, render(str(fake.path)), event)
    assert event.accepted is True
    assert fake.calls()[0]["argv"] == hook_argv(fake, "end", user="unknown")


def test_timeouts_stay_below_the_alarm(pbs, fake: Fake) -> None:
    for alarm in (10, 60, 300, 540, 3600):
        namespace = run_hook(pbs, render(str(fake.path), alarm=alarm), make_event(pbs, "begin"))
        assert all(0 < t < alarm for t in namespace["TIMEOUTS"].values()), alarm
        assert namespace["TIMEOUTS"]["prologue"] >= alarm - 30


# --- 2. install.sh -------------------------------------------------------------------------

def _install(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["sh", str(INSTALL), *args], capture_output=True, text=True,
                          timeout=60)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_install_prints_the_qmgr_commands_and_renders(tmp_path: Path, pbs, fake: Fake) -> None:
    out = tmp_path / "etc" / "hook.py"
    done = _install("--python", sys.executable, "--config", "/etc/site/vt.yaml",
                    "--alarm", "300", "--output", str(out), "--qmgr", "/opt/pbs/bin/qmgr")
    q = "/opt/pbs/bin/qmgr -c"
    assert done.stdout.splitlines() == [
        f"{q} 'create hook vtorque'",
        f"{q} 'set hook vtorque event = \"execjob_begin,execjob_prologue,execjob_launch,"
        "execjob_end,execjob_abort\"'",
        f"{q} 'set hook vtorque user = pbsadmin'",
        f"{q} 'set hook vtorque alarm = 300'",
        f"{q} 'set hook vtorque fail_action = offline_vnodes'",
        f"{q} 'import hook vtorque application/x-python default {out}'",
        f"{q} 'set hook vtorque enabled = true'",
    ]
    text = out.read_text(encoding="ascii")
    assert text == render(sys.executable, "/etc/site/vt.yaml", 300)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert list(out.parent.iterdir()) == [out]                 # no temp file left


def test_install_apply_runs_qmgr_and_is_repeatable(tmp_path: Path) -> None:
    log = tmp_path / "qmgr.log"
    exists = tmp_path / "exists"
    qmgr = tmp_path / "qmgr"
    qmgr.write_text(f"""#!/bin/sh
# fake qmgr: records -c commands; "list hook" succeeds once the hook was created
printf '%s\\n' "$2" >> {log}
case "$2" in
  "list hook "*) [ -e {exists} ] ;;
  "create hook "*) touch {exists} ;;
esac
""")
    qmgr.chmod(0o755)
    args = ("--python", sys.executable, "--output", str(tmp_path / "h.py"), "--qmgr",
            str(qmgr), "--hook-name", "vt1", "--no-abort-event", "--apply")
    _install(*args)
    first = log.read_text().splitlines()
    assert first == [
        "list hook vt1", "create hook vt1",
        'set hook vt1 event = "execjob_begin,execjob_prologue,execjob_launch,execjob_end"',
        "set hook vt1 user = pbsadmin", "set hook vt1 alarm = 540",
        "set hook vt1 fail_action = offline_vnodes",
        f"import hook vt1 application/x-python default {tmp_path / 'h.py'}",
        "set hook vt1 enabled = true"]
    _install(*args)
    second = log.read_text().splitlines()[len(first):]
    assert "create hook vt1" not in second and second[0] == "list hook vt1"
    _install("--uninstall", "--hook-name", "vt1", "--qmgr", str(qmgr), "--apply")
    assert log.read_text().splitlines()[-2:] == ["set hook vt1 enabled = false",
                                                 "delete hook vt1"]


def test_install_node_installs_the_job_shell(tmp_path: Path) -> None:
    shell = tmp_path / "libexec" / "job-shell"
    _install("--node", "--python", sys.executable, "--config", "/etc/site/vt.yaml",
             "--job-shell", str(shell))
    assert stat.S_IMODE(shell.stat().st_mode) == 0o755
    assert shell.read_text().splitlines()[-1] == (
        f'exec {sys.executable} -E -s -m vtorque.jobshell --config /etc/site/vt.yaml "$@"')
    done = _install("--node", "--python", str(tmp_path / "nope"), "--job-shell",
                    str(tmp_path / "js2"), check=False)
    assert done.returncode == 1 and not (tmp_path / "js2").exists()


@pytest.mark.parametrize("args", [
    ("--python", "relative/python"),
    ("--python", "/usr/bin/python'; rm -rf /"),
    ("--config", "/etc/vt rque.yaml"),
    ("--config", "/etc/../root/x.yaml"),
    ("--alarm", "5m"),
    ("--alarm", "5"),
    ("--hook-name", "vt;x"),
    ("--bogus",),
    ("--alarm",),
])
def test_install_refuses_unsafe_values(tmp_path: Path, args: tuple[str, ...]) -> None:
    out = tmp_path / "h.py"
    done = _install("--output", str(out), "--qmgr", "/opt/pbs/bin/qmgr", *args, check=False)
    assert done.returncode == 2
    assert not out.exists()
    assert done.stdout == ""


# --- 3. vtorque's side: vtorque/pbs_hooks.py main() ---------------------------------------

PBS_JOB = {
    "Job_Name": "vmjob", "Job_Owner": "alice@login1", "euser": "alice", "egroup": "hpc",
    "job_state": "R", "queue": "workq", "exec_host": "n1/0*2+n2/0*2", "run_count": 1,
    "Resource_List": {"ncpus": 4, "nodect": 2, "select": "2:ncpus=2"},
    "Variable_List": {"PBS_O_WORKDIR": "/home/alice/run", "VTORQUE_VM": "vcpus=2"},
}


class Site:
    def __init__(self, tmp: Path, config_data: dict[str, Any]):
        self.tmp = tmp
        self.bin_dir = tmp / "pbs-bin"
        self.job_shell = tmp / "job-shell"
        self.data = dict(config_data, node_name="n1", log_file=str(tmp / "log" / "vt.log"),
                         batch={"system": "openpbs", "bin_dir": str(self.bin_dir),
                                "shared_state_dir": str(tmp / "shared"),
                                "job_shell": str(self.job_shell)})
        self.config = tmp / "vtorque.yaml"
        self.write_config()
        self.db = self.jobs({})

    def write_config(self, **overrides: Any) -> None:
        data = dict(self.data)
        for key, value in overrides.items():
            data[key] = dict(data[key], **value) if isinstance(value, dict) else value
        self.config.write_text(yaml.safe_dump(data))

    def jobs(self, jobs: dict[str, Any], **extra: Any) -> Path:
        self.db = install("openpbs", self.bin_dir, jobs=jobs, **extra)
        return self.db

    def main(self, event: str, *args: str) -> int:
        return hooks.main("openpbs", event, list(args), str(self.config))

    def qstat_calls(self) -> list[list[str]]:
        return [c["argv"] for c in calls(self.db) if c["prog"] == "qstat"]


@pytest.fixture
def site(tmp_path: Path, config_data: dict[str, Any]) -> Site:
    return Site(tmp_path, config_data)


def test_main_short_id_is_completed_by_the_server(site: Site, no_libvirt: None) -> None:
    site.jobs({JOB: dict(PBS_JOB, Variable_List={})})
    assert site.main("prologue", "42", "alice", "sister") == 0


def test_main_launch_prints_the_job_shell_for_a_vm_job(site: Site,
                                                       capsys: pytest.CaptureFixture) -> None:
    from vtorque.journal import JobPaths
    site.jobs({JOB: PBS_JOB})
    site.job_shell.write_text("#!/bin/sh\n")
    site.job_shell.chmod(0o755)
    cfg_data = yaml.safe_load(site.config.read_text())
    paths = JobPaths.for_job(JOB, cfg_data["state_dir"], cfg_data["ramdisk_dir"])
    os.makedirs(paths.user_dir)
    Path(paths.user_dir, "rank0").write_text("vt-42-0\n")
    assert site.main("launch", JOB, "alice", "ms") == 0
    assert capsys.readouterr().out == f"{site.job_shell}\n"


def test_main_launch_failures(site: Site, capsys: pytest.CaptureFixture) -> None:
    """This node cannot launch the job: offline it (+8) and rerun the job elsewhere, at
    most batch.max_requeues times, then delete it (the real server reruns a job whose
    launch hook rejects at once, without end)."""
    site.jobs({JOB: PBS_JOB})
    assert site.main("launch", JOB, "alice", "ms") == 2 + 8         # no job shell
    assert "not installed" in capsys.readouterr().err
    site.job_shell.write_text("#!/bin/sh\n")
    site.job_shell.chmod(0o755)
    assert site.main("launch", JOB, "alice", "ms") == 2 + 8         # no guests here
    assert "no guests on this node" in capsys.readouterr().err
    site.jobs({JOB: dict(PBS_JOB, run_count=9)})
    assert site.main("launch", JOB, "alice", "ms") == 1 + 8         # past the limit
    assert "batch.max_requeues" in capsys.readouterr().err
    assert site.main("launch", JOB, "mallory", "ms") == 1
    assert capsys.readouterr().out == ""


def test_main_launch_non_vm_and_sister(site: Site, capsys: pytest.CaptureFixture) -> None:
    site.jobs({JOB: dict(PBS_JOB, Variable_List={})})
    assert site.main("launch", JOB, "alice", "ms") == 0
    before = len(site.qstat_calls())
    assert site.main("launch", JOB, "alice", "sister") == 0
    assert len(site.qstat_calls()) == before                         # sisters: no query
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("event", ["end", "abort", "execjob_end"])
def test_main_teardown_without_state_needs_no_server(site: Site, event: str) -> None:
    site.jobs({}, fail={"qstat": {"exit": 1}})
    assert site.main(event, JOB, "alice", "ms") == 0
    assert calls(site.db) == []


def test_main_epilogue_is_a_no_op(site: Site) -> None:
    assert site.main("epilogue", JOB, "alice", "ms") == 0
    assert calls(site.db) == []


@pytest.mark.parametrize("event, args, status", [
    ("prologue", [JOB, "alice"], 2),
    ("prologue", [JOB, "alice", "boss"], 2),
    ("launch", [], 2),
    ("end", [JOB, "alice"], 1),
    ("prologue", ["-x", "alice", "ms"], 2),
    ("end", ["../x", "alice", "ms"], 1),
    ("queuejob", [JOB, "alice", "ms"], 2),
])
def test_main_bad_arguments(site: Site, event: str, args: list[str], status: int) -> None:
    assert site.main(event, *args) == status
    assert calls(site.db) == []


def test_end_tears_down_whatever_batch_system_the_config_names(site: Site) -> None:
    site.write_config(batch={"system": "torque"})
    site.jobs({JOB: PBS_JOB})
    assert site.main("end", JOB, "alice", "ms") == 0


# --- 4. the hook and vtorque's side together ----------------------------------------------

BRIDGE = """\
#!{python}
# Plays `python -E -s -m vtorque.hooks --config C openpbs EVENT ARGS...` (tests only).
import sys
from vtorque import hooks
a = sys.argv[1:]
assert a[:5] == ["-E", "-s", "-m", "vtorque.hooks", "--config"], a
assert a[6] == "openpbs", a
sys.exit(hooks.main("openpbs", a[7], a[8:], a[5]))
"""


@pytest.fixture
def bridge(tmp_path: Path) -> Path:
    path = tmp_path / "bridge-python"
    path.write_text(BRIDGE.format(python=sys.executable))
    path.chmod(0o755)
    return path


def test_together_invalid_request_deletes_the_job(pbs, site: Site, bridge: Path) -> None:
    site.jobs({JOB: dict(PBS_JOB, Variable_List={"VTORQUE_VM": "vcpus=100000"})})
    event = make_event(pbs, "prologue", vm="vcpus=2")      # the event's copy is not used
    run_hook(pbs, render(str(bridge), config=str(site.config)), event, local_node="n1")
    assert event.accepted is False and event.job.delete_requested
    assert "refused" in event.reject_message and "vcpus" in event.reject_message


def test_together_the_server_decides_vm_or_not(pbs, site: Site, bridge: Path) -> None:
    site.jobs({JOB: dict(PBS_JOB, Variable_List={})})
    event = make_event(pbs, "prologue")                     # the event claims VMs
    run_hook(pbs, render(str(bridge), config=str(site.config)), event, local_node="n1")
    assert event.accepted is True
    launch = make_event(pbs, "launch")
    run_hook(pbs, render(str(bridge), config=str(site.config)), launch, local_node="n1")
    assert launch.accepted is True and launch.progname == "/bin/bash"


def test_together_unknown_job_requeues_and_end_is_clean(pbs, site: Site, bridge: Path) -> None:
    site.jobs({})
    event = make_event(pbs, "prologue")
    run_hook(pbs, render(str(bridge), config=str(site.config)), event, local_node="n1")
    assert event.accepted is False and event.job.rerun_requested
    assert "unknown to the batch server" in event.reject_message
    end = make_event(pbs, "end")
    run_hook(pbs, render(str(bridge), config=str(site.config)), end, local_node="n1")
    assert end.accepted is True
