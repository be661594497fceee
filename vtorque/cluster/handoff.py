"""The hand-off between a job's nodes, through the cluster's shared file system.

Every node's prologue publishes one status file, `<batch.shared_state_dir>/<job key>/
<node>.json`: starting (before its first guest: the node holds part of the job), then
ready (with its guests) or failed (with the reason and whose fault it was). The mother
superior waits until every node of the job is ready or one failed, bounded by the
provisioning timeout, and only then lets the job start. A node's epilogue withdraws its
status once its guests are gone (cluster/jobwide.py). No daemon and no protocol of our
own: the batch system starts the hooks on every node, the shared file system carries the
few bytes each node has to say.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from vtorque.config import Config
from vtorque.files import atomic_write, ensure_parent_dirs, remove_file, remove_tree
from vtorque.journal import job_key

STARTING = "starting"     # the node is starting guests: it holds part of the job
READY = "ready"
FAILED = "failed"


@dataclass(frozen=True)
class NodeStatus:
    node: str
    state: str                       # starting | ready | failed
    reason: str = ""
    user_fault: bool = False         # failed because of the job's request, not the node
    guests: list[dict] = field(default_factory=list)
    run: int = 0                     # the job's run count: a requeued run ignores older ones
    rdma: str | None = None          # the RDMA transport the node's guests got
    job_id: str = ""                 # the job, for the reaper (directories are job keys)


def job_dir(config: Config, job_id: str) -> str:
    return _key_dir(config, job_key(job_id))


def _key_dir(config: Config, key: str) -> str:
    return os.path.join(config.batch.shared_state_dir, key)


def publish(config: Config, job_id: str, status: NodeStatus) -> None:
    """Write this node's status atomically (readers never see half a file)."""
    status = replace(status, job_id=job_id)
    directory = job_dir(config, job_id)
    ensure_parent_dirs(config.batch.shared_state_dir, 0o755)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    atomic_write(os.path.join(directory, f"{status.node}.json"),
                 json.dumps(asdict(status), sort_keys=True), mode=0o644)


def read(config: Config, job_id: str, node: str) -> NodeStatus | None:
    return _read(os.path.join(job_dir(config, job_id), f"{node}.json"), node)


def _read(path: str, node: str) -> NodeStatus | None:
    try:
        with open(path) as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return NodeStatus(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        return NodeStatus(node, FAILED, f"unreadable status file: {exc}")


def collect(config: Config, job_id: str, nodes: Sequence[str], timeout: float,
            poll: float = 0.2, clock: Callable[[], float] = time.monotonic,
            run: int | None = None) -> dict[str, NodeStatus]:
    """Wait until every node is ready or one has failed; nodes that stay silent (or stay
    starting) past `timeout` are reported as failed (the node's fault)."""
    deadline = clock() + timeout
    statuses: dict[str, NodeStatus] = {}
    while True:
        for node in nodes:
            if node not in statuses:
                status = read(config, job_id, node)
                if status is not None and status.state != STARTING and \
                        (run is None or status.run == run):
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


def nodes_left(config: Config, job_id: str) -> list[str]:
    """The nodes whose status is still published (they may hold guests of the job)."""
    return nodes_left_in(config, job_key(job_id))


def nodes_left_in(config: Config, key: str) -> list[str]:
    try:
        names = os.listdir(_key_dir(config, key))
    except FileNotFoundError:
        return []
    return sorted(name[:-5] for name in names if name.endswith(".json"))


def read_key(config: Config, key: str, node: str) -> NodeStatus | None:
    return _read(os.path.join(_key_dir(config, key), f"{node}.json"), node)


def job_keys(config: Config) -> list[str]:
    """Every job's hand-off directory (by job key), for the reaper."""
    try:
        entries = os.listdir(config.batch.shared_state_dir)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if not e.startswith(".")
                  and os.path.isdir(_key_dir(config, e)))


def withdraw(config: Config, job_id: str, node: str) -> None:
    """Remove this node's status file, under whichever spelling of its name the job's
    node list used (a short name matches its FQDN, as node_index does)."""
    short = node.split(".")[0]
    for name in nodes_left(config, job_id):
        if name.split(".")[0] == short:
            remove_file(os.path.join(job_dir(config, job_id), f"{name}.json"))


def clear(config: Config, job_id: str) -> None:
    """Remove the job's whole hand-off directory."""
    remove_tree(job_dir(config, job_id))
