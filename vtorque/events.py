"""A job's phases on a node as events: the prologue's start, its guests ready, its
decision, the end of the job and the teardown's result. Each is one structured JSON line
in the node's log (for log shippers: `vtorque-event {...}`). Recording never fails the
caller: an event that cannot be written only loses the event.

    start     the prologue begins provisioning (node, run)
    ready     this node's guests answered (seconds, guests, image, digest)
    failed    this node could not start them (fault: user | this-node, reason)
    decided   the prologue's outcome for the batch system (action, fault, final)
    end       the epilogue begins
    teardown  the epilogue's result (seconds, ok, destroyed)
"""

from __future__ import annotations

import json
import time
from typing import Any

PHASES = ("start", "ready", "failed", "decided", "end", "teardown")
MARK = "vtorque-event"


def event_line(job_id: str, node: str, phase: str, **fields: Any) -> str:
    """The JSON text of one event (pure): keys sorted, values plain JSON."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    data = {"t": round(time.time(), 3), "job": job_id, "node": node, "phase": phase}
    data.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(data, sort_keys=True, default=str)


def record(config, job_id: str, phase: str, **fields: Any) -> None:
    """Write one event to the node's log."""
    try:
        from vtorque.log import node_logger
        from vtorque.node import node_name
        node_logger(config).info("%s %s", MARK,
                                 event_line(job_id, node_name(config.node_name), phase,
                                            **fields))
    except Exception:  # noqa: BLE001  (an event must never fail a job)
        pass
