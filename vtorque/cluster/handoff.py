"""The hand-off between a job's nodes, through the cluster's shared file system.

Every node's prologue publishes one status file, `<batch.shared_state_dir>/<job key>/
<node>.json`: starting (before its first guest: the node holds part of the job), then
ready (with its guests) or failed (with the reason and whose fault it was). The mother
superior waits until every node of the job is ready or one failed, bounded by the
provisioning timeout, and only then lets the job start. A node's epilogue withdraws its
status once its guests are gone (cluster/jobwide.py). No daemon and no protocol of our
own: the batch system starts the hooks on every node, the shared file system carries the
few bytes each node has to say.

What the statuses say decides whether the job starts and when the job-wide pieces go
back, so only root may write them: the shared state directory is verified on every use
(files.ensure_trusted_dir; on NFS this needs an export without root squashing), each
job's directory is made by root and checked to be root's, and a status is read only when
it is root's own regular file.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

from vtorque.config import Config
from vtorque.errors import NodeError
from vtorque.files import (
    DIR,
    atomic_write,
    check_dir,
    ensure_trusted_dir,
    make_dir,
    read_owned,
    remove_file,
    remove_tree,
    resolve_trusted,
)
from vtorque.journal import job_key
from vtorque.text import one_line

STATUS_MAX = 1 << 20
REASON_MAX = 1000

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
    clean: bool = False              # failed and rolled back: holds nothing of the job

    @property
    def holds(self) -> bool:
        """Whether the node may still hold part of the job (guests, files, devices)."""
        return not (self.state == FAILED and self.clean)


def job_dir(config: Config, job_id: str) -> str:
    return _key_dir(config, job_key(job_id))


def shared_root(config: Config, *, create: bool = False) -> str | None:
    """The shared state directory, verified (made by root when `create`); None when it
    does not exist yet and is not to be made. NodeError when it is not trusted."""
    path = config.batch.shared_state_dir
    if create:
        return ensure_trusted_dir(path, 0o755)
    try:
        return resolve_trusted(path, DIR)[0]
    except NodeError:
        if not os.path.lexists(path):
            return None
        raise


def _trusted_key_dir(config: Config, key: str) -> str | None:
    """A job's hand-off directory when it exists and is root's (NodeError if not)."""
    if shared_root(config) is None:
        return None
    directory = _key_dir(config, key)
    try:
        check_dir(directory)
    except FileNotFoundError:
        return None
    return directory


def _key_dir(config: Config, key: str) -> str:
    return os.path.join(config.batch.shared_state_dir, key)


def publish(config: Config, job_id: str, status: NodeStatus) -> None:
    """Write this node's status atomically (readers never see half a file)."""
    # The reason may quote a user's request: one bounded line in a file others read.
    status = replace(status, job_id=job_id, reason=one_line(status.reason, REASON_MAX))
    directory = job_dir(config, job_id)
    shared_root(config, create=True)
    try:
        make_dir(directory, 0o755)
    except NodeError:
        check_dir(directory)            # made by another node's root: fine
    atomic_write(os.path.join(directory, f"{status.node}.json"),
                 json.dumps(asdict(status), sort_keys=True), mode=0o644)


def read(config: Config, job_id: str, node: str) -> NodeStatus | None:
    return read_key(config, job_key(job_id), node)


def read_path(path: str, node: str) -> NodeStatus | None:
    """The status in the file at `path` (in a verified job directory), None when gone."""
    return _read(path, node)


def _read(path: str, node: str) -> NodeStatus | None:
    try:
        data = json.loads(read_owned(path, limit=STATUS_MAX))
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        return NodeStatus(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, NodeError, RecursionError) as exc:
        return NodeStatus(node, FAILED, f"unreadable status file: {one_line(exc, 200)}")


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
    directory = _trusted_key_dir(config, key)
    if directory is None:
        return []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(name[:-5] for name in names if name.endswith(".json"))


def read_key(config: Config, key: str, node: str) -> NodeStatus | None:
    directory = _trusted_key_dir(config, key)
    if directory is None:
        return None
    return _read(os.path.join(directory, f"{node}.json"), node)


def job_keys(config: Config) -> list[str]:
    """Every job's hand-off directory (by job key), for the reaper."""
    root = shared_root(config)
    if root is None:
        return []
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if not e.startswith(".") and _is_dir(root, e))


def _is_dir(root: str, entry: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(os.path.join(root, entry)).st_mode)
    except OSError:
        return False


def withdraw(config: Config, job_id: str, node: str) -> None:
    """Remove this node's status file, under whichever spelling of its name the job's
    node list used (a short name matches its FQDN, as node_index does)."""
    short = node.split(".")[0]
    for name in nodes_left(config, job_id):
        if name.split(".")[0] == short:
            remove_file(os.path.join(job_dir(config, job_id), f"{name}.json"))


def clear(config: Config, job_id: str) -> None:
    """Remove the job's whole hand-off directory (in the verified shared directory)."""
    if shared_root(config) is not None:
        remove_tree(job_dir(config, job_id))
