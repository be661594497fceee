"""The hand-off between a job's nodes, through the cluster's shared file system.

Every node's prologue provisions its own guests and then publishes one status file,
`<batch.shared_state_dir>/<job key>/<node>.json`: ready (with its guests) or failed (with
the reason and whose fault it was). The mother superior waits until every node of the job
has published, bounded by the provisioning timeout, and only then lets the job start.
No daemon and no protocol of our own: the batch system starts the hooks on every node,
the shared file system carries the few bytes each node has to say.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from vtorque.config import Config
from vtorque.files import atomic_write, ensure_parent_dirs, remove_file, remove_tree
from vtorque.journal import job_key

READY = "ready"
FAILED = "failed"


@dataclass(frozen=True)
class NodeStatus:
    node: str
    state: str                       # ready | failed
    reason: str = ""
    user_fault: bool = False         # failed because of the job's request, not the node
    guests: list[dict] = field(default_factory=list)
    run: int = 0                     # the job's run count: a requeued run ignores older ones
    rdma: str | None = None          # the RDMA transport the node's guests got


def job_dir(config: Config, job_id: str) -> str:
    return os.path.join(config.batch.shared_state_dir, job_key(job_id))


def _status_path(config: Config, job_id: str, node: str) -> str:
    return os.path.join(job_dir(config, job_id), f"{node}.json")


def publish(config: Config, job_id: str, status: NodeStatus) -> None:
    """Write this node's status atomically (readers never see half a file)."""
    directory = job_dir(config, job_id)
    ensure_parent_dirs(config.batch.shared_state_dir, 0o755)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    atomic_write(_status_path(config, job_id, status.node),
                 json.dumps(asdict(status), sort_keys=True), mode=0o644)


def read(config: Config, job_id: str, node: str) -> NodeStatus | None:
    try:
        with open(_status_path(config, job_id, node)) as handle:
            data = json.load(handle)
        return NodeStatus(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        return NodeStatus(node, FAILED, f"unreadable status file: {exc}")


def collect(config: Config, job_id: str, nodes: Sequence[str], timeout: float,
            poll: float = 0.2, clock: Callable[[], float] = time.monotonic,
            run: int | None = None) -> dict[str, NodeStatus]:
    """Wait until every node has published or one has failed; nodes that stay silent past
    `timeout` are reported as failed (the node's fault)."""
    deadline = clock() + timeout
    statuses: dict[str, NodeStatus] = {}
    while True:
        for node in nodes:
            if node not in statuses:
                status = read(config, job_id, node)
                if status is not None and (run is None or status.run == run):
                    statuses[node] = status
        if len(statuses) == len(nodes) or any(s.state == FAILED for s in statuses.values()):
            return statuses
        if clock() >= deadline:
            for node in nodes:
                statuses.setdefault(node, NodeStatus(
                    node, FAILED, f"node {node} did not report its guests within "
                    f"{timeout:g} s"))
            return statuses
        time.sleep(poll)


def withdraw(config: Config, job_id: str, node: str) -> None:
    """Remove this node's status file (its epilogue), under whichever spelling of its
    name the job's node list used (a short name matches its FQDN, as in node_index)."""
    short = node.split(".")[0]
    try:
        names = os.listdir(job_dir(config, job_id))
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".json") and name[:-5].split(".")[0] == short:
            remove_file(os.path.join(job_dir(config, job_id), name))


def clear(config: Config, job_id: str) -> None:
    """Remove the job's whole hand-off directory (the mother superior's epilogue)."""
    remove_tree(job_dir(config, job_id))
