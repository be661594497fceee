"""A small JSON table in one file, read and changed only under a file lock.

Used for what must never be handed out twice: guest address blocks and partition keys
(cluster-wide, in the shared state directory) and virtual functions (node-wide). Every
change is read-modify-write under the lock and written atomically, so a process killed
at any point leaves either the old table or the new one.

The table decides what root hands out, so its directory must be trusted (made by root,
verified on every use: files.ensure_trusted_dir) and the table is read only when it is
root's own regular file; a planted table or lock is refused, never followed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from vtorque.errors import NodeError
from vtorque.files import DIR, atomic_write, ensure_trusted_dir, read_owned, resolve_trusted

LOCK_TIMEOUT = 30.0
MAX_TABLE = 16 << 20


class Ledger:
    """`path` holds a JSON object; `lock_path` serializes every change to it.

    `check` validates one entry as read back (raising ValueError, TypeError, KeyError or
    IndexError on a bad one): a table of another shape is reported corrupt, never guessed.
    """

    def __init__(self, path: str, what: str, *, lock_path: str | None = None,
                 check: Callable[[Any], Any] = lambda value: value, mode: int = 0o644):
        self.path = path
        self.what = what
        self.lock_path = lock_path or os.path.join(os.path.dirname(path),
                                                   "." + os.path.basename(path) + ".lock")
        self._check = check
        self._mode = mode

    def read(self) -> dict[str, Any]:
        """The table as it is now (no lock: a consistent snapshot thanks to the renames).
        NodeError when its directory or the file is not root's own."""
        directory = os.path.dirname(self.path)
        try:
            resolve_trusted(directory, DIR)
        except NodeError as exc:
            if not os.path.lexists(directory) and str(exc).endswith(" does not exist"):
                return {}
            raise NodeError(f"{self.what}: {exc}") from None
        try:
            data = json.loads(read_owned(self.path, limit=MAX_TABLE))
            if not isinstance(data, dict):
                raise TypeError("not an object")
            return {str(k): self._check(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except NodeError as exc:
            raise NodeError(f"{self.what}: {exc}") from None
        except OSError as exc:
            raise NodeError(f"{self.what} {self.path}: cannot read: "
                            f"{exc.strerror or exc}") from None
        except (ValueError, TypeError, AttributeError, IndexError, KeyError, RecursionError):
            raise NodeError(f"{self.what} {self.path} are corrupt; fix or remove it") from None

    @contextlib.contextmanager
    def change(self, *, create: bool = True) -> Iterator[dict[str, Any]]:
        """Yield the table under the lock; write it back if the caller changed it.

        With create=False a missing table is not created (release of nothing is a no-op).
        """
        import filelock
        if not create and not os.path.exists(self.path):
            yield {}
            return
        ensure_trusted_dir(os.path.dirname(self.path), 0o755)
        try:
            with filelock.FileLock(self.lock_path, timeout=LOCK_TIMEOUT):
                table = self.read()
                before = json.dumps(table, sort_keys=True)
                yield table
                after = json.dumps(table, sort_keys=True)
                if after != before:
                    atomic_write(self.path, after, mode=self._mode)
        except filelock.Timeout:
            raise NodeError(f"{self.what} lock {self.lock_path} busy for "
                            f"{LOCK_TIMEOUT:g} s") from None
