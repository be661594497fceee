"""Torque's hooks: the mom_priv scripts contrib/torque_hooks/install puts on every node.

    prologue           mother superior, root: $1 job id, $2 user, $3 group, ...
    prologue.parallel  sister nodes, root, same arguments
    epilogue           mother superior, root: $1 job id, ..., $10 job exit status
    epilogue.parallel  sister nodes, root
    epilogue.precancel mother superior, as the job owner: nothing to do (no root); the
                       epilogue that always follows tears down

Torque runs every sister's prologue.parallel first and the mother superior's prologue
only once they all succeeded. A sister therefore starts its guests and reports (ready or
failed) through the hand-off, and always exits 0: the real server retries a failing
prologue.parallel forever, marks the node down, and never runs the sisters'
epilogue.parallel. The mother superior's prologue starts its own guests, waits for every
node and decides: 0 runs the job, 1 aborts it (the user's request is at fault), 2
requeues it (a node is at fault; batch.max_requeues bounds it, then 1: the real server
requeues a failing prologue forever, without a hold). A node at fault takes itself offline
(`pbsnodes -o`, vtorque's note). A teardown that cannot complete takes the node offline
too, and its epilogue then exits 0: a failing epilogue makes the real mom mark the node
down with its own message instead (down_on_error), cleared only with momctl.
"""

from __future__ import annotations

from collections.abc import Mapping

from vtorque.hooks.base import END, IGNORE, START, Hook, HookUsage, Invocation
from vtorque.outcome import ABORT


class TorqueHook(Hook):
    scheduler = "torque"
    events = {"prologue": START, "prologue.parallel": START, "epilogue": END,
              "epilogue.parallel": END, "epilogue.precancel": IGNORE}

    # A failing epilogue makes the mom mark its node down with a generic message of its
    # own, which replaces vtorque's note and needs `momctl -q clearmsg` besides
    # `pbsnodes -c` (down_on_error). A node vtorque took offline with its note exits 0.
    end_offlined = 0
    # The real server requeues a prologue's exit 2 forever, without a hold.
    requeues_without_bound = True

    def unknown_event_kind(self, event: str) -> str:
        return START if event.startswith("prologue") else END

    def failure_status(self, kind: str, inv: Invocation | None = None) -> int:
        """When the hook cannot work at all (its config unusable, an internal error), a
        sister still exits 0 (the mother superior finds out by its timeout) and the
        mother superior aborts the job: the real server requeues a failing prologue
        forever, about twice a second, without a hold, and without a readable config
        vtorque cannot count the job's starts to bound it."""
        if kind == START and (inv is None or inv.decides):
            return self.exit_codes[ABORT]
        return super().failure_status(kind, inv)

    def invocation(self, event: str, kind: str, args: list[str],
                   environ: Mapping[str, str]) -> Invocation:
        if not args:
            raise HookUsage("no job id argument")
        sister = event.endswith(".parallel")
        return Invocation(event, kind, args[0],
                          claimed_user=args[1] if len(args) > 1 else None,
                          mother_superior=not sister, assemble=not sister,
                          decides=not sister)


HOOK = TorqueHook()
