"""The pieces of a job that all its nodes share: each node's status in the hand-off
directory, the guest address block, the partition key.

Whichever node comes first makes them (join), whichever node leaves last releases them
(leave): a node publishes a `starting` status before it starts any guest and withdraws it
only after its guests are gone, so "no status left" means "no guest of the job anywhere",
and only then can the address block go back to the pool without two jobs ever sharing
addresses (their network filters would let them reach each other). Join and leave hold
one cluster-wide lock in the shared state directory, so a node that joins and a node that
leaves never cross.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from vtorque.cluster import handoff
from vtorque.config import Config
from vtorque.errors import NodeError
from vtorque.files import check_dir
from vtorque.vm import addresses

LOCK_NAME = ".jobwide.lock"
LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def _locked(config: Config) -> Iterator[None]:
    import filelock
    # A trusted directory: nobody but root can plant a link at the lock's place.
    path = os.path.join(handoff.shared_root(config, create=True), LOCK_NAME)
    try:
        with filelock.FileLock(path, timeout=LOCK_TIMEOUT):
            yield
    except filelock.Timeout:
        raise NodeError(f"the job-wide lock {path} is busy for {LOCK_TIMEOUT:g} s") from None


def join(config: Config, job_id: str, node: str, run: int, guests: int
         ) -> addresses.AddressBlock | None:
    """This node takes part in the job: its `starting` status, and the job's address block
    (allocated now if the job has none yet; None without guest networking)."""
    with _locked(config):
        handoff.publish(config, job_id, handoff.NodeStatus(node, handoff.STARTING, run=run))
        if config.network.mode == "none":
            return None
        return addresses.allocate(config, job_id, guests)


def leave(config: Config, job_id: str, node: str) -> bool:
    """This node holds nothing of the job any more: withdraw its status; if no node is
    left, release the job-wide pieces. True when they were released.

    Constant work per node however many nodes the job has (every node of a 4096-node job
    leaves through here, one after the other under the lock): this node's own status file
    is removed by its exact name, and "is any node left" stops at the first status file
    it sees. Only when the exact name is not there are the names read, for this node
    under another spelling (handoff.withdraw)."""
    with _locked(config):
        directory = _status_dir(config, job_id)
        if directory is None:
            left = False
        else:
            try:
                if "/" in node or node.startswith("."):
                    raise FileNotFoundError(node)       # never a path: read the names
                os.unlink(os.path.join(directory, f"{node}.json"))
            except FileNotFoundError:
                handoff.withdraw(config, job_id, node)
            left = _any_status(directory)
        if left:
            return False
        release(config, job_id)
        return True


def _status_dir(config: Config, job_id: str) -> str | None:
    """The job's hand-off directory when it exists, in the verified shared directory and
    root's own (NodeError when not); None when there is none."""
    if handoff.shared_root(config) is None:
        return None
    directory = handoff.job_dir(config, job_id)
    try:
        check_dir(directory)
    except FileNotFoundError:
        return None
    return directory


def _any_status(directory: str) -> bool:
    """Whether any node left a status in the job's hand-off directory that says it may
    still hold part of the job. A node whose start failed and rolled back completely
    says it holds nothing: its epilogue may never run (Torque runs only the mother
    superior's after a failed prologue), and its status must not keep the job's pieces.
    Stops at the first holder: one status read when the job ends normally."""
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".json"):                 # as nodes_left
                    continue
                status = handoff.read_path(entry.path, entry.name[:-5])
                if status is not None and status.holds:
                    return True
    except FileNotFoundError:
        return False
    return False


def release(config: Config, job_id: str) -> None:
    """Give back the job's address block and partition key, remove its hand-off
    directory (callers hold the lock and know no node is left)."""
    from vtorque.ibverbs import pool
    addresses.release(config, job_id)
    pool.release_pkey(config, job_id)
    handoff.clear(config, job_id)


def holds_pieces(config: Config, job_id: str) -> bool:
    """The job still has a hand-off directory, an address block or a partition key."""
    from vtorque.ibverbs import pool
    return (os.path.lexists(handoff.job_dir(config, job_id))
            or job_id in addresses.allocated_jobs(config)
            or job_id in pool.pkey_jobs(config))


def jobs(config: Config) -> set[str]:
    """Every job that holds job-wide pieces (for the reaper)."""
    from vtorque.ibverbs import pool
    found = set(addresses.allocated_jobs(config)) | pool.pkey_jobs(config)
    for key in handoff.job_keys(config):
        for node in handoff.nodes_left_in(config, key):
            status = handoff.read_key(config, key, node)
            if status is not None and status.job_id:
                found.add(status.job_id)
    return found
