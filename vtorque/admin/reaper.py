"""The reaper: removes what belongs to jobs that no longer run on this node.

Epilogues can be skipped (a node crash, a mom restart, a job the batch system forgot);
faults item 8: after a restart, stale guests and files of finished jobs must go, and
nothing of a running job may be touched. The reaper collects every job this node holds
anything of (libvirt domains by their tag, job directories by their journal), asks the
batch system about each, and cleans those it reports unknown or finished. A job it cannot
ask about (server unreachable) is left alone: doubt keeps things, never deletes them.
Run it at node boot and from cron (e.g. every 10 minutes): `vtorque reap`.

The reaper acts as root on what it finds, so it trusts only what root made: the state
directory is verified (files.resolve_trusted), a job directory counts only when it is
root's real directory whose name is the job key of the id its journal names, and the
journal only when root wrote it (journal_trusted). Anything else is reported and left
alone: a user who plants a directory and a journal naming another user's job gets that
job neither asked about nor cleaned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from vtorque.batch.base import BatchSystem
from vtorque.config import Config
from vtorque.errors import UnknownJobError, VtorqueError
from vtorque.journal import Journal, job_key, journal_trusted
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
    """Job ids this node holds domains, journals, virtual functions, huge pages or
    epilogue marks of (a mark alone: a teardown that did not complete)."""
    from vtorque import markers
    from vtorque.ibverbs import pool
    from vtorque.node import node_name
    from vtorque.vm import hugepage_reservations
    from vtorque.vm.host import Host
    jobs: set[str] = set(markers.jobs(config))
    with Host(config.libvirt_uri) as host:
        jobs.update(d.job_id for d in host.tagged_domains(node=node_name(config.node_name)))
    jobs.update(pool.assigned_jobs(config))
    jobs.update(hugepage_reservations.holding_jobs(config))
    for entry in _job_entries(config):
        job_id = journal_job(config, entry)
        if job_id is not None:
            jobs.add(job_id)
    return jobs


def _job_entries(config: Config) -> list[str]:
    """The names of the state directory's entries that may be job directories; NodeError
    when the state directory itself is not trusted (nothing in it can be)."""
    from vtorque.files import DIR, resolve_trusted
    if not os.path.lexists(config.state_dir):
        return []
    root = resolve_trusted(config.state_dir, DIR)[0]
    try:
        entries = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(e for e in entries if not e.startswith(".") and not e.endswith(".user"))


def journal_job(config: Config, entry: str) -> str | None:
    """The job whose directory `entry` is, by a journal root wrote into a directory root
    made, and only if the directory's name is that job's key; else None."""
    from vtorque import jobid
    from vtorque.errors import JobIdError
    path = os.path.join(config.state_dir, entry, "journal.jsonl")
    for record in Journal(path).entries(owner=os.geteuid()):
        job_id = record.get("job_id")
        if not isinstance(job_id, str):
            continue
        try:
            return jobid.check(job_id) if job_key(job_id) == entry else None
        except JobIdError:
            return None
    return None


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
            alive = (state is None or not state.isascii()
                     or state.upper() not in FINISHED_STATES)
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


def reap_template_guests(config: Config, *, dry_run: bool = False) -> list[Verdict]:
    """Snapshot template guests left by a build that was killed (its prologue killed at
    the batch system's alarm): no job owns them, no job's teardown finds them. A pass of
    its own beside reap(): it asks libvirt only, never the batch system."""
    from vtorque.vm import restore
    from vtorque.vm.host import Host
    try:
        with Host(config.libvirt_uri) as host:
            if dry_run:
                names = [name for name, _ in host.template_domains()]
            else:
                names = restore.reap_templates(host, config)
    except VtorqueError as exc:
        return [Verdict("-", "unknown", f"cannot look for template guests: {exc}")]
    return [Verdict("-", "reaped", f"snapshot template guest {name} left by a killed "
                    "build") for name in names]


def _empty_dirs(config: Config, dry_run: bool) -> list[Verdict]:
    """Job directories without a journal line, left by a prologue killed at once."""
    import stat
    out = []
    now = time.time()
    for entry in _job_entries(config):      # a .user directory goes with its job only
        path = os.path.join(config.state_dir, entry)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            out.append(Verdict(entry, "kept", "not a directory root made: left alone"))
            continue
        journal = os.path.join(path, "journal.jsonl")
        if os.path.lexists(journal):
            if not journal_trusted(journal, os.geteuid()):
                out.append(Verdict(entry, "kept", "a journal root did not write: left alone"))
                continue
            if Journal(journal).entries(owner=os.geteuid()):
                continue    # its job was asked about
        if now - st.st_mtime < EMPTY_DIR_GRACE:
            continue
        if not dry_run:
            from vtorque.files import remove_tree
            remove_tree(path)
        out.append(Verdict(entry, "reaped", "empty job directory"))
    return out
