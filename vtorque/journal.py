"""Per-job state on a node: where a job's files live, and the journal of what was made.

Every path of a job is derived from its id alone (JobPaths), so teardown finds the job's
files even when the journal is lost. The journal records, before and after each step, what
the node made for the job; it is what `vtorque vm list` and teardown read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from vtorque import jobid

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def job_key(job_id: str) -> str:
    """A file- and domain-name-safe key that is unique per exact job id.

    The readable part keeps logs greppable; the hash keeps 12[1] and 12_1_ (or 12 and 123
    after truncation) apart, so cleanup of one job never touches another (faults item 9).
    """
    jobid.check(job_id, "job")
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:10]
    return f"{_UNSAFE.sub('_', job_id)[:40]}-{digest}"


@dataclass(frozen=True)
class JobPaths:
    """Every path a job uses on this node."""
    job_id: str
    key: str
    job_dir: str        # disks, seeds, console logs; 0710 root:<qemu group>
    ramdisk_dir: str    # overlays for fs_type=ramdisk
    user_dir: str       # the job owner's files (job key, known_hosts, hostfiles); 0700 owner
    journal: str
    lock: str

    @classmethod
    def for_job(cls, job_id: str, state_dir: str, ramdisk_dir: str) -> JobPaths:
        key = job_key(job_id)
        job_dir = os.path.join(state_dir, key)
        return cls(job_id=job_id, key=key, job_dir=job_dir,
                   ramdisk_dir=os.path.join(ramdisk_dir, key),
                   user_dir=os.path.join(state_dir, key + ".user"),
                   journal=os.path.join(job_dir, "journal.jsonl"),
                   lock=os.path.join(state_dir, ".locks", key + ".lock"))


MAX_JOURNAL = 16 << 20


def journal_trusted(path: str, owner: int) -> bool:
    """Whether the journal at `path` and the job directory holding it are `owner`'s own:
    a real directory and a regular file of that uid, neither writable by group or others
    (the state directory above is verified by the caller)."""
    import stat
    try:
        directory = os.lstat(os.path.dirname(path))
        journal = os.lstat(path)
    except OSError:
        return False
    return (stat.S_ISDIR(directory.st_mode) and directory.st_uid == owner
            and not directory.st_mode & 0o022 and stat.S_ISREG(journal.st_mode)
            and journal.st_uid == owner and not journal.st_mode & 0o022
            and journal.st_nlink == 1)


class Journal:
    """Append-only JSON-lines log of one job's steps on this node."""

    def __init__(self, path: str):
        self.path = path

    def record(self, event: str, **fields: Any) -> None:
        entry = {"t": round(time.time(), 3), "event": event, **fields}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        # O_NOFOLLOW: a symlink planted at the journal's place is refused, not followed.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self, *, owner: int | None = None) -> list[dict[str, Any]]:
        """Every readable entry; a torn last line (crash mid-write) is skipped.

        With `owner` (root, for the reaper), only a journal that uid made counts: a
        regular file of theirs with one link, not writable by group or others, in a
        directory of theirs (journal_trusted); any other reads as no journal at all."""
        if owner is not None:
            if not journal_trusted(self.path, owner):
                return []
            from vtorque.errors import NodeError
            from vtorque.files import read_owned
            try:
                data = read_owned(self.path, limit=MAX_JOURNAL, owner=owner)
            except (OSError, NodeError):
                return []
            lines = data.decode(errors="replace").split("\n")
        else:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return []
            with os.fdopen(fd, "rb") as handle:
                lines = handle.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(entry, dict):
                out.append(entry)
        return out

    def domain_names(self) -> list[str]:
        """Names of every domain the journal says was (or was about to be) started."""
        names = []
        for entry in self.entries():
            name = entry.get("domain")
            if isinstance(name, str) and name not in names:
                names.append(name)
        return names
