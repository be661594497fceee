"""What an epilogue does on one node, for any batch system: destroy the job's guests and
files here, withdraw this node's hand-off status (and on the mother superior the job's
hand-off directory and address block), and if that cannot be completed take the node out
of service rather than leave it in an unknown state.

Needs nothing from the batch server (the job may be gone already) and works for jobs that
never had guests here: a job without state on this node costs a few stat() calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vtorque.config import Config
from vtorque.errors import VtorqueError
from vtorque.ibverbs import VF_LEDGER
from vtorque.journal import JobPaths
from vtorque.prologue import handoff
from vtorque.node import node_name as _node_name


def has_local_state(job_id: str, config: Config) -> bool:
    """True when this node holds files of the job (job dir, ramdisk dir, user dir, lock)
    or virtual functions assigned to it.

    Guests are only ever started after their job directory exists, and teardown keeps the
    directory until every guest is gone, so no local state means no guests here."""
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    if any(os.path.lexists(p) for p in (paths.job_dir, paths.ramdisk_dir,
                                        paths.user_dir, paths.lock)):
        return True
    # Functions are assigned just before the job directory is made.
    if not os.path.exists(os.path.join(config.state_dir, VF_LEDGER)):
        return False
    from vtorque.ibverbs import pool
    return job_id in pool.assigned_jobs(config)


def clean_node(job_id: str, config: Config, *, mother_superior: bool) -> list[str]:
    """Remove the job from this node; returns the guests destroyed. Cluster-wide pieces
    (hand-off directory, address block) go with the mother superior's cleanup, and only
    once its own guests are gone, so a block is never reused while a guest may live."""
    from vtorque.vm import addresses
    destroyed: list[str] = []
    if has_local_state(job_id, config):
        from vtorque.vm import lifecycle
        destroyed = lifecycle.down(job_id, config)
    handoff.withdraw(config, job_id, _node_name(config.node_name))
    if mother_superior:
        from vtorque.ibverbs import pool
        handoff.clear(config, job_id)
        addresses.release(config, job_id)
        pool.release_pkey(config, job_id)
    return destroyed


def _holds_cluster_pieces(config: Config, job_id: str) -> bool:
    """The job still holds an address block or a partition key."""
    from vtorque.ibverbs import pool
    from vtorque.vm import addresses
    return job_id in addresses.allocated_jobs(config) or job_id in pool.pkey_jobs(config)


def teardown(job_id: str, config: Config, *, mother_superior: bool,
             offline: Callable[[str, str], None] | None = None) -> tuple[bool, str]:
    """The epilogue: clean_node, and on failure take the node offline. (ok, message)."""
    if not has_local_state(job_id, config) and \
            not os.path.lexists(handoff.job_dir(config, job_id)) and \
            not (mother_superior and _holds_cluster_pieces(config, job_id)):
        return True, ""     # a job without VMs here: the common case, kept cheap
    from vtorque.log import node_logger
    log = node_logger(config)
    name = _node_name(config.node_name)
    try:
        destroyed = clean_node(job_id, config, mother_superior=mother_superior)
    except VtorqueError as exc:
        message = f"vtorque: teardown of job {job_id} on {name} incomplete: {exc}"
        log.error("%s", message)
        if offline is not None:
            try:
                offline(name, f"job {job_id} teardown incomplete; see {config.log_file}")
                log.error("node %s taken offline", name)
            except VtorqueError as off_exc:
                log.error("could not take node %s offline: %s", name, off_exc)
                message += f"; taking the node offline failed too: {off_exc}"
        return False, message
    if destroyed:
        log.info("job %s: %d guest(s) destroyed on %s, nothing left", job_id, len(destroyed),
                 name)
    return True, ""
