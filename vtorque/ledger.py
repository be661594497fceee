"""A small JSON table in one file, read and changed only under a file lock.

Used for what must never be handed out twice: guest address blocks and partition keys
(cluster-wide, in the shared state directory) and virtual functions (node-wide). Every
change is read-modify-write under the lock and written atomically, so a process killed
at any point leaves either the old table or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from vtorque.errors import NodeError
from vtorque.files import atomic_write, ensure_parent_dirs

LOCK_TIMEOUT = 30.0


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
        """The table as it is now (no lock: a consistent snapshot thanks to the renames)."""
        try:
            with open(self.path) as handle:
                data = json.load(handle)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            return {str(k): self._check(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
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
        ensure_parent_dirs(os.path.dirname(self.path), 0o755)
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
