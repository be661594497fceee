"""What an epilogue does on one node, for any batch system: destroy the job's guests and
files here, withdraw this node's hand-off status, and if that cannot be completed take the
node out of service rather than leave it in an unknown state.

Needs nothing from the batch server (the job may be gone already) and works for jobs that
never had guests here: a job without state on this node costs one directory check.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vtorque.config import Config
from vtorque.errors import VtorqueError
from vtorque.journal import JobPaths
from vtorque.log import node_logger
from vtorque.prologue import handoff
from vtorque.prologue.provision import node_name


def has_local_state(job_id: str, config: Config) -> bool:
    """True when this node holds anything of the job (job dir, ramdisk dir, lock, status).

    Guests are only ever started after their job directory exists, and teardown keeps the
    directory until every guest is gone, so no state here means no guests here."""
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    return any(os.path.lexists(p) for p in (paths.job_dir, paths.ramdisk_dir, paths.lock,
                                            handoff.job_dir(config, job_id)))


def teardown(job_id: str, config: Config, *, mother_superior: bool,
             offline: Callable[[str, str], None] | None = None) -> tuple[bool, str]:
    """Remove everything of `job_id` on this node. Returns (ok, message)."""
    if not has_local_state(job_id, config):
        return True, ""
    from vtorque.vm import addresses, lifecycle
    log = node_logger(config)
    name = node_name(config)
    try:
        destroyed = lifecycle.down(job_id, config)
        handoff.withdraw(config, job_id, name)
        if mother_superior:
            handoff.clear(config, job_id)
            addresses.release(config, job_id)
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
    log.info("job %s: %d guest(s) destroyed on %s, nothing left", job_id, len(destroyed), name)
    return True, ""
