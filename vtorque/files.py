"""Files and directories the root side relies on: verified, never trusted because they exist.

A path is *trusted* when nobody but root (or the running user, for tests and the submit
side) can change what it names: every directory on the way is owned by a trusted uid and
not writable by group or others (a sticky directory such as /tmp or /dev/shm is allowed on
the way, if the entry below it is a trusted uid's), every symlink on the way sits in such
a directory (and is a trusted uid's where the directory is sticky), and the path itself is
a trusted uid's, of the right type, not writable by group or others. Such a check cannot
be undone by a user afterwards, so a verified path may be used by name.

Writers create exclusively (O_EXCL, mkdir) and open without following links (O_NOFOLLOW),
then check the opened descriptor, never the name. A problem is one line (NodeError): the
site's setup is at fault, not the job.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import time

from vtorque.errors import NodeError, VtorqueError

_MAX_LINKS = 40                      # as the kernel's ELOOP limit
_WRITABLE = stat.S_IWGRP | stat.S_IWOTH
_OPEN_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
DIR, FILE = "directory", "file"


def trusted_uids() -> frozenset[int]:
    """Who may own what the root side relies on: root, and the user running this (the
    same when the hooks run)."""
    return frozenset({0, os.geteuid()})


class _Unsafe(Exception):
    pass


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _check_step(name: str, st: os.stat_result, parent: os.stat_result | None,
                uids: frozenset[int]) -> None:
    """Refuse an entry its directory lets a user replace (or that a user owns)."""
    if parent is not None and parent.st_mode & _WRITABLE and st.st_uid not in uids:
        raise _Unsafe(f"{name} is owned by uid {st.st_uid} in a directory others can "
                      "write")
    if stat.S_ISLNK(st.st_mode):
        return
    if not stat.S_ISDIR(st.st_mode):
        raise _Unsafe(f"{name} is not a directory")
    if st.st_uid not in uids:
        raise _Unsafe(f"{name} is owned by uid {st.st_uid}, not root")
    if st.st_mode & _WRITABLE and not st.st_mode & stat.S_ISVTX:
        raise _Unsafe(f"{name} is writable by group or others (mode {_mode(st)})")


def _walk(path: str, uids: frozenset[int], follow_last: bool = True
          ) -> tuple[str, os.stat_result, list[str]]:
    """Resolve `path` from '/' one component at a time, following only symlinks nobody
    else can change (the last one only with `follow_last`). Returns (the resolved
    existing part, its lstat, the missing rest)."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise _Unsafe("not an absolute path")
    pending = [p for p in path.split("/") if p and p != "."]
    current, st = "/", os.lstat("/")
    _check_step("/", st, None, uids)
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = os.path.dirname(current)
            st = os.lstat(current)
            continue
        name = os.path.join(current, part)
        try:
            child = os.lstat(name)
        except FileNotFoundError:
            return current, st, [part, *pending]
        except NotADirectoryError:
            raise _Unsafe(f"{current} is not a directory") from None
        last = not pending
        if not (last and not stat.S_ISLNK(child.st_mode)):
            _check_step(name, child, st, uids)
        elif st.st_mode & _WRITABLE and child.st_uid not in uids:
            raise _Unsafe(f"{name} is owned by uid {child.st_uid} in a directory others "
                          "can write")
        if stat.S_ISLNK(child.st_mode):
            if last and not follow_last:
                raise _Unsafe(f"{name} is a symlink")
            links += 1
            if links > _MAX_LINKS:
                raise _Unsafe(f"{name}: too many levels of symlinks")
            target = os.readlink(name)
            pending = [p for p in target.split("/") if p and p != "."] + pending
            if target.startswith("/"):
                current, st = "/", os.lstat("/")
            continue
        current, st = name, child
    return current, st, []


def _final_problem(path: str, st: os.stat_result, kind: str, uids: frozenset[int],
                   private: bool, single_link: bool) -> str | None:
    if kind == DIR and not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if kind == FILE and not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid not in uids:
        return f"{path} is owned by uid {st.st_uid}, not root"
    if st.st_mode & _WRITABLE:
        return f"{path} is writable by group or others (mode {_mode(st)})"
    if private and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by group or others (mode {_mode(st)}; expected 0600)"
    if single_link and kind == FILE and st.st_nlink != 1:
        return f"{path} has {st.st_nlink} hard links (a trusted file has one name)"
    return None


def _unsafe(path: str, reason: object) -> NodeError:
    text = str(reason)
    return NodeError(text if text.startswith(path + " ") else f"{path}: {text}")


def resolve_trusted(path: str, kind: str = DIR, *, private: bool = False,
                    single_link: bool = False, follow_last: bool = True
                    ) -> tuple[str, os.stat_result]:
    """(the path with trusted symlinks resolved, its lstat), or NodeError saying what makes
    `path` untrusted (missing included). Without follow_last the path itself must not be
    a symlink (a file opened with O_NOFOLLOW)."""
    uids = trusted_uids()
    try:
        resolved, st, missing = _walk(path, uids, follow_last)
    except _Unsafe as exc:
        raise _unsafe(path, exc) from None
    except OSError as exc:
        raise _unsafe(path, f"cannot check: {exc.strerror or exc}") from None
    if missing:
        raise NodeError(f"{path} does not exist")
    label = path if resolved == os.path.normpath(path) else f"{path} ({resolved})"
    problem = _final_problem(label, st, kind, uids, private, single_link)
    if problem:
        raise NodeError(problem)
    return resolved, st


def path_problem(path: str, kind: str = DIR, *, missing_ok: bool = False,
                 private: bool = False, single_link: bool = False,
                 follow_last: bool = True) -> str | None:
    """The one-line reason `path` cannot be trusted, or None (for `vtorque config check`).
    With missing_ok a path that does not exist yet is fine when what holds it is trusted
    (it will be created by root)."""
    try:
        resolve_trusted(path, kind, private=private, single_link=single_link,
                        follow_last=follow_last)
    except NodeError as exc:
        if missing_ok and str(exc) == f"{path} does not exist":
            return None
        return str(exc)
    return None


def verify_path(path: str, kind: str = DIR, **checks: bool) -> str:
    """The resolved path, or NodeError (resolve_trusted without the stat)."""
    return resolve_trusted(path, kind, **checks)[0]


def _mkdir_verified(path: str, mode: int, gid: int | None, exist_ok: bool = False) -> bool:
    """mkdir `path` (its parent is trusted) and set exactly `mode` and `gid` through a
    descriptor of what was made. An entry already there is refused, or with exist_ok
    left for the caller to verify (False)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if exist_ok:
            return False
        raise NodeError(f"{path} exists already (not made by this process)") from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _OPEN_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise NodeError(f"{path} was replaced while being made")
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return True


def ensure_trusted_dir(path: str, mode: int = 0o755, gid: int | None = None, *,
                       parents_mode: int = 0o755) -> str:
    """A trusted directory at `path`: what exists is verified (every component, as
    resolve_trusted), what is missing is created by us one component at a time, with
    exactly `mode` and `gid` (missing parents `parents_mode`). What another root process
    made meanwhile is verified like the rest. Returns the resolved path; NodeError when
    anything on the way is not trusted."""
    uids = trusted_uids()
    for _attempt in range(_MAX_LINKS):
        try:
            resolved, st, missing = _walk(path, uids)
        except _Unsafe as exc:
            raise _unsafe(path, exc) from None
        except OSError as exc:
            raise _unsafe(path, f"cannot check: {exc.strerror or exc}") from None
        if not missing:
            problem = _final_problem(path, st, DIR, uids, False, False)
            if problem:
                raise NodeError(problem)
            return resolved
        if ".." in missing:
            raise NodeError(f"{path}: '..' after a missing directory")
        for index, part in enumerate(missing):
            resolved = os.path.join(resolved, part)
            last = index == len(missing) - 1
            try:
                made = _mkdir_verified(resolved, mode if last else parents_mode,
                                       gid if last else None, exist_ok=True)
            except FileNotFoundError:
                break               # a part went away: look again
            if not made:
                break               # made by someone else: verify it
    raise NodeError(f"{path}: keeps changing while being made")


def make_dir(path: str, mode: int, gid: int | None = None) -> None:
    """Create `path` exclusively, in a trusted directory, with exactly `mode` (and group
    `gid`); anything already there (a planted directory, file or symlink) is refused.
    Its parent is not created."""
    parent = os.path.dirname(path) or "."
    resolved = verify_path(os.path.abspath(parent), DIR)
    _mkdir_verified(os.path.join(resolved, os.path.basename(path)), mode, gid)


def check_dir(path: str, *, owner: int | None = None) -> os.stat_result:
    """lstat of a directory the root side made, in a trusted directory: a real directory
    (no symlink), owned by `owner` (default: root or us), not writable by group or others;
    NodeError otherwise. FileNotFoundError passes through."""
    st = os.lstat(path)
    want = trusted_uids() if owner is None else frozenset({owner})
    if not stat.S_ISDIR(st.st_mode):
        raise NodeError(f"{path} is not a directory (planted?)")
    if st.st_uid not in want:
        raise NodeError(f"{path} is owned by uid {st.st_uid}, not root")
    if st.st_mode & _WRITABLE:
        raise NodeError(f"{path} is writable by group or others (mode {_mode(st)})")
    return st


def read_trusted(path: str, what: str, *, limit: int = 1 << 20,
                 private: bool = False) -> bytes:
    """The bytes of a small trusted file (the config, the secret): the path verified,
    the file opened without following links, the descriptor checked to be the verified
    file. NodeError (prefixed with `what`) otherwise; FileNotFoundError passes through."""
    try:
        resolved, st = resolve_trusted(path, FILE, private=private)
    except NodeError as exc:
        if str(exc) == f"{path} does not exist":
            raise FileNotFoundError(path) from None
        raise NodeError(f"{what}: {exc}" if what else str(exc)) from None
    try:
        fd = os.open(resolved, os.O_RDONLY | _OPEN_NOFOLLOW)
    except OSError as exc:
        raise NodeError(f"{what} {path}: cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise NodeError(f"{what} {path} was replaced while being read")
        problem = _final_problem(path, now, FILE, trusted_uids(), private, False)
        if problem:
            raise NodeError(f"{what}: {problem}" if what else problem)
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise NodeError(f"{what} {path} is larger than {limit} bytes")
    return data


def read_owned(path: str, *, limit: int = 1 << 20, owner: int | None = None) -> bytes:
    """The bytes of a file in a directory the caller has verified: opened without
    following a link (a FIFO does not block), refused (NodeError) unless it is a regular
    file of `owner` (default: root or us) with one link, not writable by group or others, and at
    most `limit` bytes. FileNotFoundError passes through."""
    fd = os.open(path, os.O_RDONLY | _OPEN_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(fd)
        want = trusted_uids() if owner is None else frozenset({owner})
        if not stat.S_ISREG(st.st_mode):
            raise NodeError(f"{path} is not a regular file")
        if st.st_uid not in want:
            raise NodeError(f"{path} is owned by uid {st.st_uid}, not root")
        if st.st_mode & _WRITABLE or st.st_nlink != 1:
            raise NodeError(f"{path} is writable by group or others or has another name "
                            f"(mode {_mode(st)}, {st.st_nlink} links)")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise NodeError(f"{path} is larger than {limit} bytes")
    return data


def open_append(path: str, mode: int = 0o640) -> int:
    """A descriptor appending to `path` in a trusted directory: created exclusively if
    missing, never through a symlink; refused unless it is a regular file of ours with
    one link, not writable by group or others."""
    verify_path(os.path.dirname(path), DIR)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _OPEN_NOFOLLOW, mode)
    try:
        problem = _final_problem(path, os.fstat(fd), FILE, trusted_uids(), False, True)
        if problem:
            raise NodeError(problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: str, data: bytes | str, mode: int = 0o600, *,
                 replace: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same directory and rename.

    The rename replaces a planted symlink instead of writing through it. With
    replace=False the name must be free: an existing file is never replaced
    (VtorqueError), see link_new.
    """
    if isinstance(data, str):
        data = data.encode()
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            link_new(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def link_new(tmp: str, path: str) -> None:
    """Give the finished file `tmp` the name `path`, which must be free (a hard link
    never replaces), then drop `tmp`: VtorqueError when the name was taken."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise VtorqueError(f"{path} exists already; nothing replaced") from None
    os.unlink(tmp)



def remove_tree(path: str) -> None:
    """Remove a directory tree without following symlinks; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based on Linux: safe against symlink races
    else:
        os.unlink(path)


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def flock_within(fd: int, timeout: float, poll: float = 0.05) -> bool:
    """Take an exclusive flock on `fd`, waiting up to `timeout` seconds (0: only if free
    now). False when it stayed held by another process."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
