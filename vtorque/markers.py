"""Which jobs may have something on this node: one mark per job, so that the epilogue of a
job without VMs costs a stat() in the shim instead of a Python start.

    <state_dir>/.vm-jobs/<job id>            the mark: an empty root-only file
    <config dir>/.<config name>.vm-jobs      the pointer: a symlink to <state_dir>/.vm-jobs

The prologue marks a VM job on this node (mark) before it makes anything for it: no
status in the hand-off, no address block, no function, no file, no guest exists without
the mark. The epilogue removes the mark (unmark) only once nothing of the job is left
here: after a teardown that completed, or when there was nothing to tear down. Teardown
stays idempotent; a teardown that fails keeps the mark, so the next epilogue (or the
reaper) looks again.

The shims (contrib/torque_hooks/shim.in, contrib/slurm/epilog) skip vtorque for a job
when, and only when: the pointer beside the config they pass is a symlink to a
directory, the job id is one vtorque would use as a file name, and no entry of that name
is in the directory. Everything else (no pointer, a strange id, a mark, an entry of any
kind) runs the full Python epilogue, which decides for itself: fail closed.

The pointer is what makes the shims trust the marks, so it exists only while every job
state on this node carries its mark. `arm` makes it, after adopting what older code left
(a job directory, the owner's directory, a ramdisk directory, a lock or a virtual
function of a job without a mark gets one when its journal names the job; if anything
cannot be attributed, the pointer is removed and every epilogue takes the Python path
until it can). The pointer follows the config: when state_dir changes, the next arm
points it at the new directory. Marks live in the trusted state directory
(files.ensure_trusted_dir), made exclusively and never through a link; the pointer's
directory is the config's, which the config's trust checks cover.
"""

from __future__ import annotations

import os
import re
import stat

from vtorque import jobid
from vtorque.config import Config
from vtorque.errors import JobIdError, NodeError
from vtorque.files import DIR, ensure_trusted_dir, verify_path

MARK_DIR = ".vm-jobs"
POINTER_SUFFIX = ".vm-jobs"
# The node's virtual function assignments (vtorque.ibverbs.VF_LEDGER; a test keeps the two
# in step: this layer may not import ibverbs).
VF_LEDGER = ".vf-assignments.json"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What journal.job_key makes: the only names the root side derives a job's paths from.
_KEY = re.compile(r"[A-Za-z0-9._-]{1,40}-[0-9a-f]{10}")


def pointer_path(config_path: str) -> str:
    """`/etc/vtorque/vtorque.yaml` -> `/etc/vtorque/.vtorque.yaml.vm-jobs` (the shims
    compute the same with ${CONFIG%/*}/.${CONFIG##*/}.vm-jobs)."""
    directory, name = os.path.split(config_path)
    return os.path.join(directory, f".{name}{POINTER_SUFFIX}")


def mark_dir(config: Config) -> str:
    return os.path.join(config.state_dir, MARK_DIR)


def mark(config: Config, job_id: str) -> None:
    """Mark `job_id` on this node, before anything of it is made here (idempotent).
    Afterwards the shims either see the mark (the pointer leads to it) or run vtorque
    (no pointer): never marks elsewhere. NodeError when that cannot be made so: the
    caller must then make nothing."""
    jobid.check(job_id, "mark")
    directory = ensure_trusted_dir(mark_dir(config), 0o700)
    _create(directory, job_id)
    if _armed(config, directory):
        return
    try:
        arm(config)
    except (OSError, NodeError):
        pass            # the fast path stays off; the pointer must not lead elsewhere
    if _armed(config, directory):
        return
    pointer = pointer_path(config.path)
    try:
        _remove_pointer(pointer)
    except OSError as exc:
        raise NodeError(f"{pointer} leads to other marks than {directory} and cannot be "
                        f"removed: {exc.strerror or exc}") from None


def unmark(config: Config, job_id: str) -> bool:
    """Remove the job's mark once nothing of it is left here; True when no mark is left.
    Never raises: a mark that stays only costs the next epilogue its Python start."""
    try:
        jobid.check(job_id, "unmark")
        directory = mark_dir(config)
        if not os.path.lexists(directory):
            return True
        directory = verify_path(directory, DIR)
        os.unlink(os.path.join(directory, job_id))
    except FileNotFoundError:
        return True
    except (OSError, NodeError, JobIdError):
        return False
    return True


def marked(config: Config, job_id: str) -> bool:
    """Whether this node holds a mark (or any entry) for `job_id`."""
    return os.path.lexists(os.path.join(mark_dir(config), job_id))


def jobs(config: Config) -> list[str]:
    """Every job marked on this node (for the reaper: a mark of a job the batch system no
    longer knows is a teardown that did not complete)."""
    directory = mark_dir(config)
    try:
        directory = verify_path(directory, DIR)
        names = os.listdir(directory)
    except (OSError, NodeError):
        return []
    return sorted(n for n in names if not n.startswith(".") and _is_id(n))


def arm(config: Config) -> str | None:
    """Turn the shims' fast path on for this config: adopt the unmarked state of jobs on
    this node, then point the pointer at the marks. Returns None when armed, else why not
    (the pointer is then removed: the shims run vtorque for every job). NodeError when the
    state directory or the config's directory is not trusted."""
    directory = ensure_trusted_dir(mark_dir(config), 0o700)
    pointer = pointer_path(config.path)
    unknown = _adopt(config, directory)
    if unknown:
        _remove_pointer(pointer)
        shown = ", ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        return (f"state of jobs without a mark on this node ({shown}): every epilogue "
                "runs vtorque until they are gone")
    if not _armed(config, directory):
        verify_path(os.path.dirname(pointer) or "/", DIR)
        _remove_pointer(pointer)
        temporary = f"{pointer}.{os.getpid()}.tmp"
        _remove_pointer(temporary)
        os.symlink(directory, temporary)
        os.replace(temporary, pointer)
    return None


def disarm(config: Config) -> None:
    """Remove the pointer: the shims run vtorque for every job again (uninstall)."""
    _remove_pointer(pointer_path(config.path))


def _armed(config: Config, directory: str) -> bool:
    try:
        return os.readlink(pointer_path(config.path)) == directory
    except OSError:
        return False


def _create(directory: str, job_id: str) -> None:
    """The mark: made exclusively, never through a link; an odd entry in its place (only
    root can put one there) is replaced."""
    path = os.path.join(directory, job_id)
    for _attempt in range(3):
        try:
            os.close(os.open(path, _CREATE, 0o600))
            return
        except FileExistsError:
            pass
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1:
            return
        if stat.S_ISDIR(st.st_mode):
            raise NodeError(f"{path} is a directory, not a job's mark")
        os.unlink(path)
    raise NodeError(f"{path}: the job's mark keeps changing while being made")


def _remove_pointer(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(path)              # only ever empty: a directory here is not ours
    else:
        os.unlink(path)


def _is_id(name: str) -> bool:
    try:
        jobid.check(name)
    except JobIdError:
        return False
    return True


def _adopt(config: Config, directory: str) -> list[str]:
    """Mark every job with state on this node but no mark; return the entries that
    cannot be attributed to a job (nothing is armed while there are any). Only entries
    named like a job key count: the root side finds a job's state by its key alone."""
    from vtorque.journal import Journal, job_key
    marks = set(jobs(config))
    keys = {job_key(j) for j in marks}
    unknown: list[str] = []
    pending: dict[str, str] = {}              # job key -> where its state is
    places = [(config.state_dir, ".user"), (os.path.join(config.state_dir, ".locks"), ".lock")]
    try:
        places.append((verify_path(config.ramdisk_dir, DIR), ""))
    except NodeError:
        pass            # missing, or not root's: the root side keeps no state there
    for where, suffix in places:
        for entry in _entries(where):
            key = entry.removesuffix(suffix) if suffix else entry
            if _KEY.fullmatch(key) and key not in keys:
                pending.setdefault(key, os.path.join(where, entry))
    for key, where in sorted(pending.items()):
        found = None
        for record in Journal(os.path.join(config.state_dir, key, "journal.jsonl")
                              ).entries(owner=os.geteuid()):
            value = record.get("job_id")
            if isinstance(value, str) and _is_id(value) and job_key(value) == key:
                found = value
                break
        if found is None:
            unknown.append(where)
        else:
            _create(directory, found)
            keys.add(key)
    for job in sorted(_function_jobs(config) - marks):
        if _is_id(job):
            _create(directory, job)
        else:
            unknown.append(f"a virtual function of {job!r}")
    return unknown


def _entries(directory: str) -> list[str]:
    try:
        return [e for e in os.listdir(directory) if not e.startswith(".")]
    except FileNotFoundError:
        return []


def _function_jobs(config: Config) -> set[str]:
    """The jobs holding virtual functions on this node (the ledger ibverbs/pool.py
    keeps, read here without the adapters' code)."""
    path = os.path.join(config.state_dir, VF_LEDGER)
    if not os.path.lexists(path):
        return set()
    from vtorque.ledger import Ledger
    table = Ledger(path, "virtual function assignments").read()
    return {str(entry.get("job_id")) for entry in table.values() if isinstance(entry, dict)}
