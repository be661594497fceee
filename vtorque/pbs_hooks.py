"""`vtorque hook openpbs <event> <job id> <user> <ms|sister>`: the OpenPBS / PBS Professional
hook contract -> the same engines as Torque (prologue.provision, epilogue.teardown).

Called by the hook script contrib/pbs_hooks/vtorque_hook.py, which pbs_mom runs as root for
the events below and which passes the job id, the job's owner and whether this MoM is the
job's primary ("ms") or a sister. Those are the event's values: the job itself is always
read back from the server (`qstat -f -F json -x`, vtorque.batch.openpbs) and re-validated.

    prologue  execjob_prologue, every MoM of the job before the job starts (PBS >= 18.1):
              bring up this node's guests; the primary MoM waits for every node.
    launch    execjob_launch, the primary MoM, the job's first task: for a VM job print
              the job shell (config batch.job_shell) on stdout, one line; the hook makes it
              the job's program with the job script as its argument. No output: not a VM
              job, the job runs as usual.
    epilogue  execjob_epilogue: nothing (teardown belongs to end and abort, which PBS runs
              on every MoM).
    end       execjob_end, every MoM; abort: execjob_abort (the job failed to start): tear
              down the job's guests and files on this node.

Exit status, prologue and launch: 0 accept; 1 the job's request is at fault (the hook
deletes the job: rerunning cannot help); 2 this node is at fault (the hook rejects and PBS
requeues the job; batch.max_requeues bounds it). end and abort: 0 clean; 1 the teardown
is incomplete (the node has been or is being taken offline). A message for people goes to
stderr, one line; the hook turns it into the reject message.
"""

from __future__ import annotations

import os
import sys

from vtorque import config as config_mod
from vtorque.errors import ConfigError, NodeError, VtorqueError

EVENTS = ("prologue", "launch", "epilogue", "end", "abort")
ROLES = ("ms", "sister")
EXIT = {"run": 0, "abort": 1, "requeue": 2}
USER_FAULT, NODE_FAULT = 1, 2


def _say(message: str) -> None:
    """The hook turns vtorque's stderr into the reject message and the MoM log line."""
    if message:
        print(message, file=sys.stderr)


def _failure(event: str) -> int:
    """The exit status for "this hook could not do its job" in `event`."""
    return NODE_FAULT if event in ("prologue", "launch") else 1


def main(event: str, args: list[str], config_path: str | None) -> int:
    """`vtorque hook openpbs EVENT JOBID USER ROLE` (see the module docstring)."""
    if event.startswith("execjob_"):
        event = event[len("execjob_"):]
    if event not in EVENTS:
        _say(f"vtorque: unknown OpenPBS hook event {event!r} (known: {', '.join(EVENTS)})")
        return 2
    try:
        return _main(event, args, config_path)
    except Exception as exc:  # a bug must not leave the job in limbo; the traceback is logged
        import traceback
        _say(f"vtorque: internal error in the OpenPBS {event} hook: {exc!r}")
        traceback.print_exc(file=sys.stderr)
        return _failure(event)


def _main(event: str, args: list[str], config_path: str | None) -> int:
    if event == "epilogue":
        return 0
    if len(args) != 3 or args[2] not in ROLES:
        _say(f"vtorque: {event}: expected arguments JOBID USER ms|sister, got {args!r}")
        return _failure(event)
    job_id, user, role = args
    from vtorque.batch.base import check_job_id
    try:
        check_job_id(job_id, "openpbs")
        config = config_mod.load(config_path)
    except (ConfigError, NodeError) as exc:
        _say(f"vtorque: {exc}")
        return _failure(event)
    try:
        adapter = _adapter(config)
    except VtorqueError as exc:
        if event in ("end", "abort"):
            adapter = None      # teardown needs nothing from the server
        else:
            _say(f"vtorque: {exc}")
            return NODE_FAULT
    if event in ("end", "abort"):
        return _teardown(job_id, config, role == "ms", adapter)
    if event == "prologue":
        return _prologue(adapter, config, job_id, user, role == "ms")
    return _launch(adapter, config, job_id, user, role == "ms")


def _adapter(config):
    from vtorque.batch import base
    if config.batch.system not in ("auto", "openpbs"):
        raise NodeError(f"the OpenPBS hooks ran, but {config.path} sets batch.system: "
                        f"{config.batch.system}")
    return base.get("openpbs", config.batch.bin_dir)


def _read_job(adapter, config, job_id: str):
    """The job from the server, or None after saying why (a node fault: requeue)."""
    from vtorque.log import node_logger
    try:
        return adapter.job(job_id)
    except VtorqueError as exc:
        node_logger(config).error("job %s: cannot read the job back: %s", job_id, exc)
        _say(f"vtorque: cannot read job {job_id} from the PBS server: {exc}")
        return None


def _owner_mismatch(ctx, user: str) -> str:
    if user == ctx.user:
        return ""
    return (f"vtorque: job {ctx.job_id}: the MoM says user {user!r}, the server says "
            f"{ctx.user!r}; refusing to start guests")


def _prologue(adapter, config, job_id: str, user: str, mother_superior: bool) -> int:
    from vtorque.prologue.provision import prologue
    ctx = _read_job(adapter, config, job_id)
    if ctx is None:
        return NODE_FAULT
    if not ctx.is_vm_job:
        return 0
    outcome = prologue(ctx, config, claimed_user=user, mother_superior=mother_superior)
    _say(outcome.message)
    return EXIT[outcome.action]


def _launch(adapter, config, job_id: str, user: str, mother_superior: bool) -> int:
    """Print the job shell for a VM job whose guests are up here; nothing otherwise."""
    from vtorque.journal import JobPaths
    if not mother_superior:
        return 0                 # the job's program only ever starts on the primary MoM
    ctx = _read_job(adapter, config, job_id)
    if ctx is None:
        return NODE_FAULT
    if not ctx.is_vm_job:
        return 0
    mismatch = _owner_mismatch(ctx, user)
    if mismatch:
        _say(mismatch)
        return USER_FAULT
    shell = config.batch.job_shell
    if not (os.path.isfile(shell) and os.access(shell, os.X_OK)):
        _say(f"vtorque: job {job_id}: the job shell {shell} is not installed on this node "
             f"(config batch.job_shell in {config.path})")
        return NODE_FAULT
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    if not os.path.isfile(os.path.join(paths.user_dir, "rank0")):
        _say(f"vtorque: job {job_id}: no guests on this node ({paths.user_dir} has no "
             "rank0); the prologue did not bring them up")
        return NODE_FAULT
    print(shell)
    return 0


def _teardown(job_id: str, config, mother_superior: bool, adapter) -> int:
    from vtorque.epilogue.teardown import teardown
    ok, message = teardown(job_id, config, mother_superior=mother_superior,
                           offline=adapter.offline_node if adapter is not None else None)
    _say(message)
    return 0 if ok else 1
