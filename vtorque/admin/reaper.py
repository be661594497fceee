"""The reaper: removes what belongs to jobs that no longer run on this node.

Epilogues can be skipped (a node crash, a mom restart, a job the batch system forgot);
faults item 8: after a restart, stale guests and files of finished jobs must go, and
nothing of a running job may be touched. The reaper collects every job this node holds
anything of (libvirt domains by their tag, job directories by their journal), asks the
batch system about each, and cleans those it reports unknown or finished. A job it cannot
ask about (server unreachable) is left alone: doubt keeps things, never deletes them.
Run it at node boot and from cron (e.g. every 10 minutes): `vtorque reap`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from vtorque.batch.base import BatchSystem
from vtorque.config import Config
from vtorque.errors import UnknownJobError, VtorqueError
from vtorque.journal import Journal
from vtorque.log import node_logger

# Scheduler states of jobs that are over (Torque/PBS letters, Slurm words). Any other
# state counts as alive, queued and held included: a requeued job may start again at
# any moment, and the reaper must never race its prologue.
FINISHED_STATES = {"C", "F", "X", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT",
                   "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"}
# An empty job directory (a prologue killed before its first journal line) is removed
# once it is older than this.
EMPTY_DIR_GRACE = 600.0


@dataclass(frozen=True)
class Verdict:
    job_id: str
    action: str          # reaped | kept | unknown
    reason: str


def local_jobs(config: Config) -> set[str]:
    """Job ids this node holds domains, journals or virtual functions of."""
    from vtorque.ibverbs import pool
    from vtorque.node import node_name
    from vtorque.vm.host import Host
    jobs: set[str] = set()
    with Host(config.libvirt_uri) as host:
        jobs.update(d.job_id for d in host.tagged_domains(node=node_name(config.node_name)))
    try:
        entries = os.listdir(config.state_dir)
    except FileNotFoundError:
        entries = []
    jobs.update(pool.assigned_jobs(config))
    for entry in entries:
        if entry.startswith(".") or entry.endswith(".user"):
            continue
        for record in Journal(os.path.join(config.state_dir, entry, "journal.jsonl")).entries():
            if isinstance(record.get("job_id"), str):
                jobs.add(record["job_id"])
                break
    return jobs


def reap(config: Config, batch: BatchSystem, *, dry_run: bool = False) -> list[Verdict]:
    """Clean every job of this node (and every job holding job-wide pieces) that the batch
    system reports finished or unknown. A job's guests are found by their libvirt tag as
    well as by its files; its job-wide pieces go only when no node is left holding any
    part of it (cluster/jobwide.py), whichever node's reaper comes last."""
    from vtorque.cluster import jobwide
    from vtorque.epilogue.teardown import clean_node
    log = node_logger(config)
    verdicts = []
    for job_id in sorted(local_jobs(config) | jobwide.jobs(config)):
        try:
            state = batch.job(job_id).state
            alive = state is None or state.upper() not in FINISHED_STATES
            reason = f"batch system reports state {state}"
        except UnknownJobError:
            alive, reason = False, "unknown to the batch system"
        except VtorqueError as exc:
            verdicts.append(Verdict(job_id, "unknown", f"cannot ask the batch system: {exc}"))
            continue
        if alive:
            verdicts.append(Verdict(job_id, "kept", reason))
            continue
        if not dry_run:
            try:
                clean_node(job_id, config, domains=True)
                log.info("reaper: job %s cleaned (%s)", job_id, reason)
            except VtorqueError as exc:
                verdicts.append(Verdict(job_id, "unknown", f"cleanup failed: {exc}"))
                log.error("reaper: job %s: cleanup failed: %s", job_id, exc)
                continue
        verdicts.append(Verdict(job_id, "reaped", reason))
    verdicts += _empty_dirs(config, dry_run)
    return verdicts


def _empty_dirs(config: Config, dry_run: bool) -> list[Verdict]:
    """Job directories without a journal line, left by a prologue killed at once."""
    out = []
    try:
        entries = os.listdir(config.state_dir)
    except FileNotFoundError:
        return out
    now = time.time()
    for entry in entries:
        path = os.path.join(config.state_dir, entry)
        if entry.startswith(".") or entry.endswith(".user") or not os.path.isdir(path) \
                or os.path.islink(path):
            continue        # a .user directory goes with its job, never on its own
        if Journal(os.path.join(path, "journal.jsonl")).entries():
            continue
        if now - os.lstat(path).st_mtime < EMPTY_DIR_GRACE:
            continue
        if not dry_run:
            from vtorque.files import remove_tree
            remove_tree(path)
        out.append(Verdict(entry, "reaped", "empty job directory"))
    return out
