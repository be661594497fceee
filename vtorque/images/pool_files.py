"""Files of the pool as the root side reads them: components checked one by one without
following links, owners and modes, headers read, contents hashed."""

from __future__ import annotations

import hashlib
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
    """Refuse unless owned by owner_uid and not writable by group or others."""
    if st.st_uid != owner_uid:
        raise refuse(name, f"{what} is owned by uid {st.st_uid}, not {owner_uid}")
    if st.st_mode & 0o022:
        raise refuse(name, f"{what} is writable by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})")


def read_head(path: str, size: int) -> bytes:
    """Up to size bytes from the start of a regular file, not following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read(size)


def sha256_file(path: str) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks (never follows a final symlink)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
