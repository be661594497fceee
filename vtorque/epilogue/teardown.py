"""What an epilogue does on one node, for any batch system: destroy the job's guests and
files here, give back its virtual functions, withdraw this node from the job (the last
node out releases the job-wide pieces, cluster/jobwide.py), and if that cannot be
completed take the node out of service rather than leave it in an unknown state.

Needs nothing from the batch server (the job may be gone already) and works for jobs that
never had guests here: a job without state on this node costs a few stat() calls.

The job's mark on this node (vtorque.markers, made by the prologue before anything else)
goes here and only here, once nothing of the job is left: after clean_node completed, or
when there was nothing to tear down. A teardown that fails keeps it, so the next
epilogue (or the reaper) looks again; the shims skip the Python epilogue only for jobs
without a mark.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vtorque.config import Config
from vtorque.errors import NodeError, VtorqueError
from vtorque.ibverbs import VF_LEDGER
from vtorque.journal import JobPaths
from vtorque.node import node_name
from vtorque.vm import HUGEPAGE_LEDGER


def has_local_state(job_id: str, config: Config) -> bool:
    """True when this node holds files of the job (job dir, ramdisk dir, user dir, lock),
    virtual functions assigned to it or huge pages held for it.

    Guests are only ever started after their job directory exists, and teardown keeps the
    directory until every guest is gone, so no local state means no guests here (the
    reaper, which cannot rely on that after a crash, also asks libvirt)."""
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    if any(os.path.lexists(p) for p in (paths.job_dir, paths.ramdisk_dir,
                                        paths.user_dir, paths.lock)):
        return True
    # Functions are assigned and huge pages held just before the job directory is made.
    if os.path.exists(os.path.join(config.state_dir, HUGEPAGE_LEDGER)):
        from vtorque.vm import hugepage_reservations
        if job_id in hugepage_reservations.holding_jobs(config):
            return True
    if not os.path.exists(os.path.join(config.state_dir, VF_LEDGER)):
        return False
    from vtorque.ibverbs import pool
    return job_id in pool.assigned_jobs(config)


def anything_here(job_id: str, config: Config) -> bool:
    """Whether the epilogue has anything to do: the job's state here, or job-wide pieces
    this node may be the last to release. Doubt counts as yes."""
    if has_local_state(job_id, config):
        return True
    from vtorque.cluster import handoff
    if os.path.lexists(handoff.job_dir(config, job_id)):
        return True
    if config.network.mode == "none" and not config.ibverbs.pkey_first:
        return False
    from vtorque.cluster import jobwide
    try:
        return jobwide.holds_pieces(config, job_id)
    except (OSError, VtorqueError):
        return True


def clean_node(job_id: str, config: Config, *, domains: bool = False) -> list[str]:
    """Remove the job from this node; returns the guests destroyed. `domains`: ask libvirt
    even when no file of the job is left (the reaper). The job-wide pieces go with the
    last node that leaves, only once its own guests are gone."""
    from vtorque.cluster import jobwide
    destroyed: list[str] = []
    if domains or has_local_state(job_id, config):
        from vtorque.vm import lifecycle
        destroyed = lifecycle.down(job_id, config)
        release_functions(job_id, config)
    jobwide.leave(config, job_id, node_name(config.node_name))
    forget(job_id, config)
    return destroyed


def forget(job_id: str, config: Config) -> bool:
    """Remove the job's mark on this node once nothing of the job is left here (True
    when no mark is left). Anything still here keeps it: the next epilogue looks again.
    A job that never had a mark here costs one lstat()."""
    from vtorque import markers
    if not markers.marked(config, job_id):
        return True
    if has_local_state(job_id, config):
        return False
    if markers.unmark(config, job_id):
        return True
    from vtorque.log import node_logger
    node_logger(config).error("job %s: its mark on this node cannot be removed; every "
                              "epilogue of the job runs vtorque", job_id)
    return False


def release_functions(job_id: str, config: Config) -> None:
    """Give the job's virtual functions back (libvirt has returned them to the host)."""
    if not os.path.exists(os.path.join(config.state_dir, VF_LEDGER)):
        return
    from vtorque.ibverbs import pool
    try:
        pool.release(config, job_id)
    except NodeError as exc:
        raise NodeError(f"teardown of job {job_id}: {exc}") from None


def teardown(job_id: str, config: Config, *,
             offline: Callable[[str, str], None] | None = None) -> tuple[bool, str]:
    """The epilogue: clean_node, and on failure take the node offline. (ok, message)."""
    if not anything_here(job_id, config):
        forget(job_id, config)
        return True, ""     # a job without VMs here: the common case, kept cheap
    import time

    from vtorque import events
    from vtorque.log import node_logger
    log = node_logger(config)
    name = node_name(config.node_name)
    events.record(config, job_id, "end")
    started = time.monotonic()
    try:
        destroyed = clean_node(job_id, config)
    except (VtorqueError, OSError) as exc:
        message = f"vtorque: teardown of job {job_id} on {name} incomplete: {exc}"
        log.error("%s", message)
        events.record(config, job_id, "teardown", ok=False,
                      seconds=round(time.monotonic() - started, 3), reason=str(exc))
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
    events.record(config, job_id, "teardown", ok=True, destroyed=len(destroyed),
                  seconds=round(time.monotonic() - started, 3))
    return True, ""
