"""File writers for the root side: atomic, private, never following planted symlinks."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile


def atomic_write(path: str, data: bytes | str, mode: int = 0o600) -> None:
    """Write `data` to `path` via a temp file in the same directory and rename.

    The rename replaces a planted symlink instead of writing through it.
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
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def make_dir(path: str, mode: int, gid: int | None = None) -> None:
    """Create `path` (not its parents) with exactly `mode`; refuse anything already there
    that is not a real directory owned by us (a planted symlink or another user's dir)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(errno.EEXIST, "exists and is not our directory", path) from None
    os.chmod(path, mode, follow_symlinks=False)
    if gid is not None:
        os.chown(path, -1, gid, follow_symlinks=False)


def ensure_parent_dirs(path: str, mode: int = 0o755) -> None:
    """Create missing parents of a root-owned tree such as /var/lib/vtorque/jobs."""
    os.makedirs(path, mode=mode, exist_ok=True)


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
