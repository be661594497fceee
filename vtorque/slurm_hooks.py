"""`vtorque hook slurm prolog|epilog`: Slurm's Prolog and Epilog contract -> the engines
(prologue.provision, epilogue.teardown), as contrib/slurm/prolog and epilog call it.

slurmd runs the Prolog and the Epilog as root on every node of a job (the Prolog at
allocation with PrologFlags=Alloc), with no arguments and the job's facts in SLURM_*
variables. Of those only the job id is trusted (SLURM_JOB_ID): the job itself is read back
from slurmctld (`scontrol show job -dd`, vtorque.batch.slurm) and re-validated.
SLURM_JOB_USER, when set, must agree with it. SLURMD_NODENAME (set by slurmd for both
scripts, src/plugins/prep/script/prep_script_slurmd.c) names this node as Slurm knows it;
it wins over the config's node_name and the host name, and is the only way to tell
simulated nodes apart where several slurmd run on one host. It is used for nothing else.
The mother superior is the job's first node (its BatchHost, where the batch script runs).

Prolog outcomes (the issue's rules: a node fault goes the documented Slurm way, a user
error never drains a healthy node):

    not a VM job        exit 0.
    guests up           exit 0: the job runs (on the mother superior once every node
                        reported its guests ready).
    user error          the request is invalid, the image is not (or no longer)
                        authorized, the job's record is ambiguous, or the owner disagrees:
                        AdminComment="vtorque: job N refused: <reason>", `scancel`, exit 0.
                        The job ends CANCELLED, the reason shows in `scontrol show job`,
                        the node stays in service.
    node fault here     this node failed (libvirtd down, a guest never answered, disk
                        full, config unusable, the job cannot be read): the node is drained
                        with the reason (`scontrol update state=drain`: `sinfo -R` shows
                        it, and Slurm keeps it when it drains the node for the failed
                        Prolog), AdminComment gets the reason, exit 1: Slurm requeues the
                        job held (JobState=PENDING Reason=launch_failed_requeued_held).
    node fault elsewhere  the mother superior saw another node fail or stay silent: that
                        node drains itself; here AdminComment gets the reason, the job is
                        requeued held (`scontrol requeuehold Incomplete`, or cancelled when
                        it was submitted with --no-requeue), exit 0: this healthy node is
                        not drained.
    past the limit      a node fault of a job already started more than
                        batch.max_requeues times (Restarts + 1): the node is still drained
                        (the fault is real), but the job is cancelled instead of requeued,
                        with the reason, exit 0. If draining fails, exit 1 instead, so
                        Slurm drains the node (and requeues the job held).

Epilog: tears down this node's guests and files (also for a job whose Prolog never ran:
nothing there, exit 0). Exit 0: clean; exit 1: the teardown is incomplete, the node has
been drained with the reason (Slurm drains it too on a failed Epilog).
An unexpected error in either is exit 1 (a node fault), with a traceback on stderr, which
slurmd writes to its log with the script's output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from vtorque import config as config_mod
from vtorque.errors import ConfigError, NodeError, UserError, VtorqueError

EVENTS = ("prolog", "epilog")
OK, NODE_FAULT = 0, 1
READ_RETRY_SECONDS = 1.0


def _say(message: str) -> None:
    """slurmd logs a failed script's output; the node's log has every line too."""
    if message:
        print(message, file=sys.stderr, flush=True)


def main(event: str, args: list[str], config_path: str | None,
         environ: Mapping[str, str] | None = None) -> int:
    """`vtorque hook slurm prolog|epilog` (see the module docstring)."""
    env = os.environ if environ is None else environ
    if event not in EVENTS:
        _say(f"vtorque: unknown Slurm hook event {event!r} (known: {', '.join(EVENTS)})")
        return NODE_FAULT
    try:
        return _main(event, args, config_path, env)
    except Exception as exc:  # a bug must not pass silently: fail the script, log it
        import traceback
        _say(f"vtorque: internal error in the Slurm {event}: {exc!r}")
        traceback.print_exc(file=sys.stderr)
        return NODE_FAULT


def _main(event: str, args: list[str], config_path: str | None,
          env: Mapping[str, str]) -> int:
    if args:
        _say(f"vtorque: the Slurm {event} takes no arguments (slurmd passes SLURM_* "
             f"variables), got {args!r}")
        return NODE_FAULT
    from vtorque.batch.base import check_job_id, check_node_name
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or ""
    try:
        check_job_id(job_id, "slurm")
        config = config_mod.load(config_path)
        slurmd_name = env.get("SLURMD_NODENAME") or ""
        if slurmd_name:
            import dataclasses
            config = dataclasses.replace(config,
                                         node_name=check_node_name(slurmd_name, "slurm"))
    except (ConfigError, NodeError) as exc:
        _say(f"vtorque: {event} of job {job_id or '?'}: {exc}")
        return NODE_FAULT
    if event == "prolog":
        return _prolog(config, job_id, env)
    return _epilog(config, job_id, env)


def _adapter(config, env: Mapping[str, str]):
    if config.batch.system not in ("auto", "slurm"):
        raise NodeError(f"the Slurm hooks ran, but {config.path} sets batch.system: "
                        f"{config.batch.system}")
    from vtorque.batch.slurm import Slurm
    return Slurm(config.batch.bin_dir, environ=env)


# --- prolog ------------------------------------------------------------------------------

def _read_job(adapter, job_id: str):
    """The job from slurmctld; one retry for a passing hiccup (not for a RecordError)."""
    import time
    try:
        return adapter.read_job(job_id)
    except UserError:
        raise
    except VtorqueError:
        time.sleep(READ_RETRY_SECONDS)
        return adapter.read_job(job_id)


def _prolog(config, job_id: str, env: Mapping[str, str]) -> int:
    from vtorque.log import node_logger
    from vtorque.node import node_name
    log = node_logger(config)
    name = node_name(config.node_name)
    try:
        adapter = _adapter(config, env)
    except VtorqueError as exc:
        _say(f"vtorque: prolog of job {job_id} on {name}: {exc}")
        log.error("job %s: %s", job_id, exc)
        return NODE_FAULT
    act = _Actions(adapter, config, job_id, name, log)
    try:
        job = _read_job(adapter, job_id)
    except UserError as exc:                    # an ambiguous record of a VM job
        return act.refuse(f"vtorque: job {job_id} refused: {exc}")
    except VtorqueError as exc:
        return act.own_fault(f"vtorque: node {name} cannot read job {job_id} from "
                             f"slurmctld: {exc}", final=False)
    act.previous = job.admin_comment
    ctx = job.ctx
    if not ctx.is_vm_job:
        return OK
    env_user = env.get("SLURM_JOB_USER") or ""
    if env_user and env_user != ctx.user:
        return act.refuse(f"vtorque: job {job_id} refused: slurmd says user {env_user!r}, "
                          f"slurmctld says {ctx.user!r}; no guests started")
    import dataclasses

    from vtorque.prologue.provision import ABORT, REQUEUE, RUN, Outcome, node_index, provision
    final = ctx.run_count > config.batch.max_requeues
    try:
        mother_superior = node_index(name, ctx.nodes) == 0
    except NodeError as exc:
        return act.own_fault(f"vtorque: job {job_id}: {exc}", final=final, ctx=ctx)
    try:
        # run_count 0: provision never turns a node fault into an abort; the limit is
        # applied below, where a node fault and a user error are told apart.
        outcome = provision(dataclasses.replace(ctx, run_count=0), config,
                            mother_superior=mother_superior)
    except VtorqueError as exc:  # e.g. the shared state directory is unwritable
        outcome = Outcome(REQUEUE, f"vtorque: node {name} failed to start the guests of "
                                   f"job {job_id}: {exc}")
    if outcome.action == RUN:
        _say(outcome.message)
        return OK
    if outcome.action == ABORT:
        return act.refuse(outcome.message)
    if mother_superior and fault_elsewhere(outcome.message, job_id, name):
        return act.others_fault(outcome.message, final=final, ctx=ctx)
    return act.own_fault(outcome.message, final=final, ctx=ctx)


def fault_elsewhere(message: str, job_id: str, name: str) -> bool:
    """Whether the mother superior's requeue outcome blames other nodes only.

    provision() says "vtorque: job J could not start its guests: n2: ...; n3: ..." when
    nodes failed in the hand-off (this node's own failure to write the job's files says
    "<this node>: cannot write the job's files"), and "vtorque: node N failed to start ..."
    when this node failed; tests/unit/test_slurm_hooks.py pins both through provision()."""
    prefix = f"vtorque: job {job_id} could not start its guests: "
    return message.startswith(prefix) and f"{name}: cannot write the job's files" not in \
        message[len(prefix):]


class _Actions:
    """What the prolog does to the job and this node; every Slurm call is best effort
    (logged when it fails): the exit status is the last word."""

    def __init__(self, adapter, config, job_id: str, name: str, log):
        self.adapter = adapter
        self.config = config
        self.job_id = job_id
        self.name = name
        self.log = log
        self.previous: str | None = None

    def _try(self, what: str, call, *args) -> bool:
        try:
            call(*args)
            return True
        except VtorqueError as exc:
            self.log.error("job %s: %s failed: %s", self.job_id, what, exc)
            _say(f"vtorque: {what} failed: {exc}")
            return False

    def _note(self, text: str) -> None:
        self._try("scontrol update admincomment", self.adapter.note_job, self.job_id,
                  text, self.previous)

    def refuse(self, message: str) -> int:
        """A user error: note, cancel, keep the node in service."""
        _say(message)
        self.log.error("%s", message)
        self._note(f"{message} (job cancelled; node {self.name} stays in service)")
        self._try("scancel", self.adapter.cancel_job, self.job_id)
        return OK

    def own_fault(self, message: str, *, final: bool, ctx=None) -> int:
        """This node failed: drain it with the reason; requeue (exit 1) or, past the
        limit, cancel."""
        _say(message)
        self.log.error("%s", message)
        drained = self._try("scontrol update state=drain", self.adapter.offline_node,
                            self.name, message.removeprefix("vtorque: "))
        if final and drained:
            self._note(f"{message}; {self._limit(ctx)}: job cancelled, not requeued; node "
                       f"{self.name} drained")
            self._try("scancel", self.adapter.cancel_job, self.job_id)
            return OK
        self._note(f"{message}; node {self.name} drained, job requeued held")
        return NODE_FAULT

    def others_fault(self, message: str, *, final: bool, ctx=None) -> int:
        """Another node failed (it drains itself): requeue held or cancel the job from
        here, never drain this node."""
        _say(message)
        self.log.error("%s", message)
        if final:
            self._note(f"{message}; {self._limit(ctx)}: job cancelled, not requeued")
            self._try("scancel", self.adapter.cancel_job, self.job_id)
            return OK
        self._note(f"{message}; job requeued held")
        if not self._try("scontrol requeuehold", self.adapter.requeue_hold, self.job_id):
            self._note(f"{message}; the job cannot be requeued (--no-requeue?): cancelled")
            self._try("scancel", self.adapter.cancel_job, self.job_id)
        return OK

    def _limit(self, ctx) -> str:
        runs = ctx.run_count if ctx is not None else "?"
        return (f"the job was started {runs} times and failed on node faults (limit "
                f"batch.max_requeues={self.config.batch.max_requeues})")


# --- epilog ------------------------------------------------------------------------------

def _anything_here(config, job_id: str) -> bool:
    """Whether this node may hold anything of the job: its files here, its hand-off
    directory, or (with guest networking) an address block. Doubt counts as yes."""
    from vtorque.epilogue.teardown import has_local_state
    from vtorque.prologue import handoff
    if has_local_state(job_id, config) or os.path.lexists(handoff.job_dir(config, job_id)):
        return True
    if config.network.mode == "none":
        return False
    from vtorque.vm import addresses
    try:
        return job_id in addresses.allocated_jobs(config)
    except (OSError, VtorqueError):
        return True


def _epilog(config, job_id: str, env: Mapping[str, str]) -> int:
    if not _anything_here(config, job_id):
        return OK     # every job of the cluster passes here: a few stat() calls
    from vtorque.epilogue.teardown import teardown
    from vtorque.node import node_name
    name = node_name(config.node_name)
    adapter = None
    try:
        adapter = _adapter(config, env)
    except VtorqueError as exc:
        _say(f"vtorque: epilog of job {job_id} on {name}: {exc}")
    mother_superior = _is_mother_superior(adapter, job_id, name, env)

    def offline(node: str, note: str) -> None:
        if adapter is None:
            raise NodeError("no Slurm adapter to drain the node with")
        adapter.offline_node(node, note)

    ok, message = teardown(job_id, config, mother_superior=mother_superior,
                           offline=offline)
    _say(message)
    return OK if ok else 1


def _is_mother_superior(adapter, job_id: str, name: str, env: Mapping[str, str]) -> bool:
    """The first node of the job as the prolog saw it (BatchHost first, from slurmctld);
    for a job slurmctld no longer shows with nodes (requeued, purged), the first node of
    the node list slurmd passes (SLURM_JOB_NODELIST, or SLURM_NODELIST as 22.05 names it).
    When neither answers: not the mother superior (the job's shared pieces then wait for
    `vtorque reap`, which is safe; releasing them early is not)."""
    from vtorque.prologue.provision import node_index
    nodes: tuple[str, ...] = ()
    if adapter is not None:
        try:
            nodes = adapter.job(job_id).nodes
        except VtorqueError:
            nodes = ()
    if not nodes:
        from vtorque.batch.slurm import expand_hostlist
        text = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        try:
            nodes = tuple(expand_hostlist(text))
        except NodeError:
            nodes = ()
    try:
        return bool(nodes) and node_index(name, nodes) == 0
    except NodeError:
        return False
