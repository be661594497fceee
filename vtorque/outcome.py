"""What a prologue decided, as data: the action for the batch system, the message for
people, and whose fault a failure was. The hooks map it onto their scheduler's exit status
or action; no decision anywhere reads a message's wording. A leaf module."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RUN, ABORT, REQUEUE = "run", "abort", "requeue"
# Whose fault a failure is: the job's request (the user's), this node's, other nodes'.
USER, THIS_NODE, OTHER_NODES = "user", "this-node", "other-nodes"


@dataclass(frozen=True)
class Outcome:
    action: str                      # run | abort | requeue
    message: str = ""
    fault: str | None = None         # None (success) | user | this-node | other-nodes
    nodes: tuple[str, ...] = ()      # the nodes at fault (this-node: this one)
    final: bool = False              # a node fault past the requeue limit: not requeued
    # What the job's record in the batch system keeps of a start that succeeded (the
    # image and its digest); a failure's record is its message.
    note: str = ""

    @classmethod
    def run(cls, message: str = "", note: str = "") -> Outcome:
        return cls(RUN, message, note=note)

    @property
    def record(self) -> str:
        """The line for the job's record: the note of a success, else the message."""
        return self.note if self.action == RUN else self.message

    @classmethod
    def user_error(cls, message: str) -> Outcome:
        """The job's request is at fault: running it again cannot help."""
        return cls(ABORT, message, USER)

    @classmethod
    def node_fault(cls, message: str, node: str) -> Outcome:
        """This node failed: the job may run elsewhere."""
        return cls(REQUEUE, message, THIS_NODE, (node,))

    @classmethod
    def others_fault(cls, message: str, nodes: tuple[str, ...]) -> Outcome:
        """Other nodes of the job failed (they report and offline themselves)."""
        return cls(REQUEUE, message, OTHER_NODES, tuple(nodes))

    @property
    def node_failure(self) -> bool:
        return self.fault in (THIS_NODE, OTHER_NODES)

    def within_limit(self, run_count: int, max_requeues: int) -> Outcome:
        """A node fault of a job already started more than `max_requeues` times aborts
        instead of requeueing (a broken cluster must not requeue a job forever)."""
        if not self.node_failure or run_count <= max_requeues:
            return self
        return dataclasses.replace(
            self, action=ABORT, final=True,
            message=f"{self.message}; the job was started {run_count} times and failed "
                    f"on node faults (limit batch.max_requeues={max_requeues}), aborting it")
