"""Files of the pool as the root side reads them: components checked one by one without
following links, owners and modes, headers read, contents hashed.

A pool file is verified through one open descriptor (open_verified): what is checked,
read and hashed is the inode the descriptor holds, and it is the one the path names
before and after (its identity: device, inode, size, mtime, ctime). A file with a second
hard link is refused: another name for it may sit outside the pool."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

from vtorque.images.model import refuse

_CHUNK = 1 << 20


def components(pool: str, path: str) -> Iterator[str]:
    """Every path from the pool (exclusive) down to path (inclusive)."""
    current = pool
    for part in os.path.relpath(path, pool).split(os.sep):
        current = os.path.join(current, part)
        yield current


def lstat_in_pool(name: str, path: str, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise refuse(name, f"{what} does not exist") from None
    except OSError as exc:
        raise refuse(name, f"cannot check {what}: {exc.strerror}") from None


def check_owner(name: str, st: os.stat_result, what: str, owner_uid: int) -> None:
    """Refuse unless owned by owner_uid and not writable by group or others; a regular
    file must have exactly one link."""
    if st.st_uid != owner_uid:
        raise refuse(name, f"{what} is owned by uid {st.st_uid}, not {owner_uid}")
    if st.st_mode & 0o022:
        raise refuse(name, f"{what} is writable by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})")
    if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
        raise refuse(name, f"{what} has {st.st_nlink} hard links (a pool file has one "
                            "name, inside the pool)")


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes when a file is replaced or written: device, inode, size, mtime, ctime
    (ctime cannot be set back, not even by root)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def open_verified(name: str, path: str, what: str, owner_uid: int) -> tuple[int, os.stat_result]:
    """(descriptor, fstat) of the pool file `path`: opened without following a link and
    checked on the descriptor (regular, owner, mode, one link), which must hold the inode
    the path names (lstat before the open)."""
    before = lstat_in_pool(name, path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                     | os.O_NOCTTY)
    except OSError as exc:
        raise refuse(name, f"cannot open {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(name, f"{what} is not a regular file")
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise refuse(name, f"{what} was replaced while being opened")
        check_owner(name, st, what, owner_uid)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def check_unchanged(name: str, path: str, what: str, fd: int, st: os.stat_result) -> None:
    """Refuse when the file held by `fd` changed since `st`, or `path` names another file
    now: what was verified must be what is used."""
    now = os.fstat(fd)
    if identity(now) != identity(st):
        raise refuse(name, f"{what} changed while being verified")
    current = lstat_in_pool(name, path, what)
    if identity(current) != identity(st) or current.st_nlink != 1:
        raise refuse(name, f"{what} was replaced or linked while being verified")


def read_head_fd(fd: int, size: int) -> bytes:
    """Up to size bytes from the start of the file `fd` holds (its offset untouched)."""
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, _CHUNK), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def read_head(path: str, size: int) -> bytes:
    """Up to size bytes from the start of a regular file, not following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read(size)


def sha256_file(path: str, fd: int | None = None) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks (never follows a final symlink);
    with `fd`, of the file that descriptor holds (`path` only names it)."""
    import hashlib  # here: OpenSSL's start-up is not paid by whoever only lists the pool
    digest = hashlib.sha256()
    if fd is not None:
        offset = 0
        while chunk := os.pread(fd, _CHUNK, offset):
            digest.update(chunk)
            offset += len(chunk)
        return digest.hexdigest()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
