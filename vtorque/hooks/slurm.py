"""Slurm's hooks: `vtorque hook slurm prolog|epilog`, as contrib/slurm/prolog and epilog
call it.

slurmd runs the Prolog and the Epilog as root on every node of a job (the Prolog at
allocation with PrologFlags=Alloc), with no arguments and the job's facts in SLURM_*
variables. Of those only the job id is trusted (SLURM_JOB_ID): the job itself is read
back from slurmctld (`scontrol show job -dd`) and re-validated. SLURM_JOB_USER, when set,
must agree with it. SLURMD_NODENAME names this node as Slurm knows it (it wins over the
config's node_name; several slurmd may run on one host). The mother superior is the job's
first node (its BatchHost, where the batch script runs).

Prolog outcomes (a node fault goes the documented Slurm way; a user error never drains a
healthy node):

    not a VM job        exit 0.
    guests up           exit 0: the job runs (on the mother superior once every node
                        reported its guests ready).
    user error          AdminComment="vtorque: job N refused: <reason>", `scancel`, exit
                        0: the job ends CANCELLED with the reason in `scontrol show job`,
                        the node stays in service.
    this node's fault   the node is drained with the reason (`sinfo -R`), AdminComment
                        gets it, exit 1: Slurm requeues the job held.
    other nodes' fault  (the mother superior saw other nodes fail; they drain themselves)
                        AdminComment gets the reason, the job is requeued held
                        (`scontrol requeuehold Incomplete`, or cancelled when it cannot be
                        requeued), exit 0: this healthy node is not drained.
    past the limit      a node fault of a job started more than batch.max_requeues times:
                        the node is still drained when the fault is its own, the job is
                        cancelled instead of requeued, exit 0 (exit 1 if draining failed,
                        so that Slurm drains the node).

Epilog: tears down this node's guests and files (also for a job whose Prolog never ran:
nothing there, exit 0). Exit 0: clean; exit 1: the teardown is incomplete, the node has
been drained with the reason. Every other failure is exit 1 (a node fault).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from vtorque.errors import RecordError, VtorqueError
from vtorque.hooks.base import END, START, Hook, HookUsage, Invocation, say
from vtorque.outcome import OTHER_NODES, RUN, THIS_NODE, USER, Outcome
from vtorque.text import one_line

READ_RETRY_SECONDS = 1.0


class SlurmHook(Hook):
    scheduler = "slurm"
    events = {"prolog": START, "epilog": END}
    exit_codes = {RUN: 0, "abort": 0, "requeue": 1}

    def failure_status(self, kind: str, inv: Invocation | None = None) -> int:
        return 1

    def invocation(self, event: str, kind: str, args: list[str],
                   environ: Mapping[str, str]) -> Invocation:
        if args:
            raise HookUsage(f"the Slurm {event} takes no arguments (slurmd passes SLURM_* "
                            f"variables), got {one_line(repr(args), 120)}")
        return Invocation(event, kind,
                          environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or "",
                          claimed_user=environ.get("SLURM_JOB_USER") or None,
                          node_name=environ.get("SLURMD_NODENAME") or None)

    def adapter(self, config, environ: Mapping[str, str]):
        from vtorque.batch.slurm import Slurm
        return Slurm(config.batch.bin_dir, environ=environ)

    def read_job(self, adapter, job_id: str):
        """One retry for a passing hiccup (not for an ambiguous record)."""
        try:
            return adapter.job(job_id)
        except RecordError:
            raise
        except VtorqueError:
            time.sleep(READ_RETRY_SECONDS)
            return adapter.job(job_id)

    def act(self, outcome: Outcome, inv: Invocation, config, adapter, ctx) -> int:
        say(outcome.message)
        actions = _Actions(adapter, self.log(config), inv.job_id,
                           ctx.admin_note if ctx is not None else None)
        if outcome.action == RUN:
            if outcome.note:            # the mother superior: what the job runs on
                actions.note(outcome.note)
            return 0
        node = outcome.nodes[0] if outcome.fault == THIS_NODE else None
        from vtorque.node import node_name
        here = node_name(config.node_name)
        if outcome.fault == USER:
            actions.note(f"{outcome.message} (job cancelled; node {here} stays in service)")
            actions.cancel()
            return 0
        if outcome.fault == OTHER_NODES:
            if outcome.final:
                actions.note(f"{outcome.message}: job cancelled, not requeued")
                actions.cancel()
                return 0
            actions.note(f"{outcome.message}; job requeued held")
            if not actions.requeue_hold():
                actions.note(f"{outcome.message}; the job cannot be requeued "
                             "(--no-requeue?): cancelled")
                actions.cancel()
            return 0
        drained = actions.drain(node or here, outcome.message)
        if outcome.final and drained:
            actions.note(f"{outcome.message}: job cancelled, not requeued; node "
                         f"{node or here} drained")
            actions.cancel()
            return 0
        actions.note(f"{outcome.message}; node {node or here} drained, job requeued held")
        return 1


class _Actions:
    """What the prolog does to the job and this node; every Slurm call is best effort
    (logged when it fails): the exit status is the last word."""

    def __init__(self, adapter, log, job_id: str, previous: str | None):
        self.adapter = adapter
        self.log = log
        self.job_id = job_id
        self.previous = previous

    def _try(self, what: str, call, *args) -> bool:
        try:
            call(*args)
            return True
        except VtorqueError as exc:
            self.log.error("job %s: %s failed: %s", self.job_id, what, exc)
            say(f"vtorque: {what} failed: {exc}")
            return False

    def note(self, text: str) -> None:
        self._try("scontrol update admincomment", self.adapter.note_job, self.job_id,
                  text, self.previous)

    def cancel(self) -> None:
        self._try("scancel", self.adapter.cancel_job, self.job_id)

    def requeue_hold(self) -> bool:
        return self._try("scontrol requeuehold", self.adapter.requeue_hold, self.job_id)

    def drain(self, node: str, reason: str) -> bool:
        return self._try("scontrol update state=drain", self.adapter.offline_node, node,
                         reason)


HOOK = SlurmHook()
