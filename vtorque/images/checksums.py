"""The checksum cache: a root-only file remembering the sha256 of each pool file by its
identity (device, inode, size, mtime, ctime), so multi-GB images are hashed once."""

from __future__ import annotations

import os
import stat
from typing import Any

CACHE_FILE = "checksums.json"


def identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class ChecksumCache:
    """Remembered verified sha256 values, keyed by path and the file's stat identity.

    Stored as one JSON file in a private directory; anything odd about the directory or the
    file (corrupt, foreign owner, symlink) means the cache is not used, never an error.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, CACHE_FILE)
        self.usable = self._prepare_dir()
        self.entries: dict[str, dict[str, Any]] = self._load() if self.usable else {}
        self.dirty = False

    def _prepare_dir(self) -> bool:
        """The cache decides which files are not hashed again, so it is used only in a
        trusted directory (files.ensure_trusted_dir: root's, all the way up)."""
        from vtorque.errors import NodeError
        from vtorque.files import ensure_trusted_dir
        try:
            self.directory = ensure_trusted_dir(self.directory, 0o700)
        except (OSError, NodeError):
            return False
        self.path = os.path.join(self.directory, CACHE_FILE)
        return True

    def _load(self) -> dict[str, dict[str, Any]]:
        import json  # json and tempfile only where used: vsub imports this module
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                        or st.st_mode & 0o022 or st.st_nlink != 1):
                    return {}
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        entry = self.entries.get(path)
        if (isinstance(entry, dict) and entry.get("id") == identity(st)
                and isinstance(entry.get("sha256"), str)):
            return entry["sha256"]
        return None

    def store(self, path: str, st: os.stat_result, sha256: str) -> None:
        if self.usable:
            self.entries[path] = {"id": identity(st), "sha256": sha256}
            self.dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename); failures only lose the cache."""
        if not self.dirty:
            return
        import json
        import tempfile
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".checksums.")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": self.entries}, f)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
