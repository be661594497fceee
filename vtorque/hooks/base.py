"""The one hook contract every batch system's hooks follow.

A scheduler's hook module (torque.py, openpbs.py, slurm.py) says only what differs: which
of its events start, launch or end a job, how it passes the job id, the owner and this
node's role, and how an Outcome becomes its exit status or action. Everything else is
here, the same for all three:

- a message for people is one line on stderr (each batch system puts a hook's stderr
  where its users and admins read it: the job's error file, the reject message, slurmd's
  log), and every decision is also logged on the node;
- the job id is checked before anything else, the config loaded and validated, and
  batch.system must name this scheduler (or be auto);
- the job is read back from the batch server (never from the environment or a file the
  user can write) and its owner must be the one the batch system names here;
- the prologue's Outcome is bounded by batch.max_requeues;
- the end of a job tears down this node's guests and, if that cannot be completed,
  takes the node out of service;
- an unexpected exception is an internal error: one line and the traceback on stderr,
  and the exit status that means "this node failed" for the event.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from vtorque import config as config_mod
from vtorque import jobid
from vtorque.errors import NodeError, RecordError, VtorqueError
from vtorque.outcome import ABORT, REQUEUE, RUN, THIS_NODE, Outcome
from vtorque.text import one_line

# What an event of the batch system means to vtorque.
START, LAUNCH, END, IGNORE = "start", "launch", "end", "ignore"
# The prologue marks a VM job on each node before it makes anything there, and the
# epilogue removes the mark once nothing is left (vtorque.markers): the install scripts
# arm the shims' epilogue fast path only where this is set.
MARKS_JOBS = True
MESSAGE_MAX = 1000


def say(message: str) -> None:
    """One line for people on stderr (empty messages are not printed)."""
    if message:
        print(one_line(message, MESSAGE_MAX), file=sys.stderr, flush=True)


class HookUsage(NodeError):
    """The batch system called the hook with arguments it never passes."""


@dataclass(frozen=True)
class Invocation:
    """One call of a hook, as the batch system made it."""
    event: str                       # the scheduler's own event name
    kind: str                        # start | launch | end | ignore
    job_id: str
    claimed_user: str | None = None  # the owner the batch system names here
    mother_superior: bool | None = None   # None: from the job's node list
    node_name: str | None = None     # this node's name as the batch system passes it
    provision_here: bool = True      # start this node's guests in this event
    assemble: bool = True            # the mother superior waits for all in this event
    # False: this event only reports how this node did (ready or failed, and a node fault
    # takes the node offline); it never fails the job itself. The batch system's rules
    # make a failing sister (or an early event) worse than useless: Torque retries a
    # failing prologue.parallel forever and marks the node down, OpenPBS reruns the job.
    decides: bool = True


class Hook(ABC):
    """A scheduler's hooks: subclasses fill in `scheduler`, `events`, `exit_codes` and
    `invocation`, and override `act` where an outcome means more than an exit status."""

    scheduler: str = ""
    events: Mapping[str, str] = {}                 # event name -> START/LAUNCH/END/IGNORE
    exit_codes: Mapping[str, int] = {RUN: 0, ABORT: 1, REQUEUE: 2}
    # Whether the batch system requeues a job whose prologue asks for it again and again
    # with no bound of its own (Torque: about twice a second, without a hold).
    requeues_without_bound = False
    end_failure = 1                                # teardown incomplete
    end_offlined = 1           # teardown incomplete, and this node took itself offline

    # -- what differs between schedulers ---------------------------------------------------
    @abstractmethod
    def invocation(self, event: str, kind: str, args: list[str],
                   environ: Mapping[str, str]) -> Invocation:
        """The job id, owner and role from the batch system's arguments/environment;
        HookUsage when they are not what the batch system passes."""

    # The exit status of an event that only reports (Invocation.decides False) when the
    # hook cannot do its job: such an event never fails the job (the mother superior finds
    # out by its timeout); OpenPBS adds its OFFLINE bit.
    report_failure = 0

    def failure_status(self, kind: str, inv: Invocation | None = None) -> int:
        """The exit status for "this hook could not do its job" in an event of `kind`."""
        if inv is not None and not inv.decides and kind == START:
            return self.report_failure
        return self.exit_codes[REQUEUE] if kind in (START, LAUNCH) else self.end_failure

    def unknown_event_kind(self, event: str) -> str:
        """What an event the hook does not know is most likely (for its exit status)."""
        return START

    def adapter(self, config, environ: Mapping[str, str]):
        from vtorque.batch import registry
        return registry.get(self.scheduler, config.batch.bin_dir)

    def act(self, outcome: Outcome, inv: Invocation, config, adapter, ctx) -> int:
        """What the outcome of a start does: this node's own fault takes it out of
        service (with the reason as the note), then the exit status; an event that only
        reports accepts."""
        say(outcome.message)
        offlined = self.offline_here(outcome, config, adapter) \
            if outcome.fault == THIS_NODE else True
        if not inv.decides:
            return 0
        self.note_job(outcome.record, inv, config, adapter)
        if (outcome.action == REQUEUE and ctx is None and not offlined
                and self.requeues_without_bound):
            # The job could not be read (its starts cannot be counted) and this node
            # stays in service: the server would start it here again at once, without
            # end. Abort instead.
            say(f"vtorque: job {inv.job_id}: aborted rather than requeued: its starts "
                "cannot be counted and this node could not be taken offline")
            return self.exit_codes[ABORT]
        return self.exit_codes[outcome.action]

    def note_job(self, text: str, inv: Invocation, config, adapter) -> None:
        """Leave `text` in the job's record (what ran, or why it did not); best effort,
        logged: the job's fate is the exit status."""
        if not text:
            return
        try:
            adapter.note_job(inv.job_id, text)
        except VtorqueError as exc:
            self.log(config).error("job %s: cannot note the job's record: %s", inv.job_id,
                                   exc)

    def offline_here(self, outcome: Outcome, config, adapter) -> bool:
        """Take this node out of service for its own fault; best effort, logged."""
        from vtorque.node import node_name
        node = outcome.nodes[0] if outcome.nodes else node_name(config.node_name)
        try:
            adapter.offline_node(node, outcome.message)
            self.log(config).error("node %s taken offline: %s", node,
                                   one_line(outcome.message, MESSAGE_MAX))
            return True
        except VtorqueError as exc:
            self.log(config).error("could not take node %s offline: %s", node, exc)
            say(f"vtorque: taking node {node} offline failed: {exc}")
            return False

    def launch(self, inv: Invocation, config, adapter) -> int:
        raise HookUsage(f"{self.scheduler} has no launch event")

    # -- the contract ------------------------------------------------------------------------
    def main(self, event: str, args: list[str], config_path: str | None,
             environ: Mapping[str, str] | None = None) -> int:
        import os
        env = os.environ if environ is None else environ
        kind = self.events.get(event)
        if kind is None:
            say(f"vtorque: unknown {self.scheduler} hook event {one_line(event, 40)!r} "
                f"(known: {', '.join(self.events)})")
            return self.failure_status(self.unknown_event_kind(event))
        if kind == IGNORE:
            return 0
        inv = None
        try:
            inv = self.invocation(event, kind, args, env)
            jobid.check(inv.job_id, self.scheduler)
            return self._main(inv, config_path, env)
        except VtorqueError as exc:      # the batch system's arguments are not usable
            say(f"vtorque: {self.scheduler} {event}: {exc}")
            return self.failure_status(kind, inv)
        except Exception as exc:  # a bug must not leave the job in limbo: fail, log it
            import traceback
            say(f"vtorque: internal error in the {self.scheduler} {event} hook: {exc!r}")
            traceback.print_exc(file=sys.stderr)
            return self.failure_status(kind, inv)

    def _main(self, inv: Invocation, config_path: str | None,
              environ: Mapping[str, str]) -> int:
        event, kind = inv.event, inv.kind
        try:
            config = self.load_config(config_path, inv)
        except VtorqueError as exc:
            say(f"vtorque: {self.scheduler} {event}: {exc}")
            return self.failure_status(kind, inv)
        if kind == END:
            return self.end(inv, config, environ)
        try:
            self.check_system(config)
            adapter = self.adapter(config, environ)
        except VtorqueError as exc:
            say(f"vtorque: {self.scheduler} {event} of job {inv.job_id}: {exc}")
            self.log(config).error("job %s: %s", inv.job_id, exc)
            return self.failure_status(kind, inv)
        if kind == LAUNCH:
            return self.launch(inv, config, adapter)
        return self.start(inv, config, adapter)

    def load_config(self, config_path: str | None, inv: Invocation):
        config = config_mod.load(config_path)
        if inv.node_name:
            from vtorque.batch.base import check_node_name
            config = config.with_node_name(check_node_name(inv.node_name, self.scheduler))
        return config

    def check_system(self, config) -> None:
        if config.batch.system not in ("auto", self.scheduler):
            raise NodeError(f"the {self.scheduler} hooks ran, but {config.path} sets "
                            f"batch.system: {config.batch.system}")

    @staticmethod
    def log(config):
        from vtorque.log import node_logger
        return node_logger(config)

    def read_job(self, adapter, job_id: str):
        """The job as the batch server reports it (errors propagate)."""
        return adapter.job(job_id)

    # -- start --------------------------------------------------------------------------------
    def start(self, inv: Invocation, config, adapter) -> int:
        outcome, ctx = self.decide_start(inv, config, adapter)
        if outcome.fault is not None:
            self.log(config).error("%s", one_line(outcome.message, MESSAGE_MAX))
        if ctx is None or ctx.is_vm_job:
            from vtorque import events
            events.record(config, inv.job_id, "decided", action=outcome.action,
                          fault=outcome.fault, final=outcome.final or None)
        return self.act(outcome, inv, config, adapter, ctx)

    def read_and_check(self, inv: Invocation, config, adapter) -> tuple[Outcome | None,
                                                                       object]:
        """The job from the server and the owner check: (None, ctx) when both pass, else
        (the outcome that ends this event, ctx or None)."""
        from vtorque.node import node_name
        try:
            ctx = self.read_job(adapter, inv.job_id)
        except RecordError as exc:
            return Outcome.user_error(f"vtorque: job {inv.job_id} refused: {exc}"), None
        except VtorqueError as exc:
            name = node_name(config.node_name)
            return Outcome.node_fault(f"vtorque: node {name} cannot read job {inv.job_id} "
                                      f"from the batch server: {exc}", name), None
        if ctx.is_vm_job and inv.claimed_user is not None and inv.claimed_user != ctx.user:
            return Outcome.user_error(
                f"vtorque: job {inv.job_id}: the batch system says user "
                f"{one_line(inv.claimed_user, 64)!r} here, the server says {ctx.user!r}; "
                "refusing to start guests"), ctx
        return None, ctx

    def decide_start(self, inv: Invocation, config, adapter) -> tuple[Outcome, object]:
        outcome, ctx = self.read_and_check(inv, config, adapter)
        if outcome is not None:
            return outcome, ctx
        if not ctx.is_vm_job:
            return Outcome.run(), ctx
        from vtorque.node import node_name
        name = node_name(config.node_name)
        try:
            mother_superior = inv.mother_superior
            if mother_superior is None:
                mother_superior = ctx.node_index(name) == 0
            from vtorque.prologue import provision
            outcome = provision.start(ctx, config, mother_superior=mother_superior,
                                      provision_here=inv.provision_here,
                                      assemble=inv.assemble)
        except (VtorqueError, OSError) as exc:   # e.g. the shared state dir is unwritable
            outcome = Outcome.node_fault(f"vtorque: node {name} failed to start the guests "
                                         f"of job {inv.job_id}: {exc}", name)
        return outcome.within_limit(ctx.run_count, config.batch.max_requeues), ctx

    # -- end ----------------------------------------------------------------------------------
    def end(self, inv: Invocation, config, environ: Mapping[str, str]) -> int:
        """Tear down this node's part of the job; offline the node if that fails. Needs
        nothing from the batch server (the job may be gone already)."""
        from vtorque.epilogue.teardown import teardown

        offlined: list[str] = []

        def offline(node: str, note: str) -> None:    # the adapter only when needed
            self.adapter(config, environ).offline_node(node, note)
            offlined.append(node)

        # Every job of the cluster without a mark here passes here when the shims' fast
        # path is off: teardown returns at once (a few stat() calls) and removes the mark
        # of a job with nothing left.
        ok, message = teardown(inv.job_id, config, offline=offline)
        say(message)
        if ok:
            return 0
        return self.end_offlined if offlined else self.end_failure
