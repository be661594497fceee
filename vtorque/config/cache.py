"""The config file's parsed YAML, remembered for root's next load.

Every hook of every job loads the config; importing PyYAML and parsing the file is most
of that work. Root keeps what the parser made of the file in `.<name>.cache` beside it
(the directory the trust checks have just verified, root-only 0600), and the next load
uses it only when the file's bytes are exactly the ones it was made from. The file is
still read, through every trust check, on every load (config.load): only the YAML step
is skipped, and validation runs on the remembered values as it runs on freshly parsed
ones, the checks that look at the file system (image_pool exists) included.

Why the bytes and not only the file's identity (inode, size, mtime): timestamps tick in
jiffies, so an edit that keeps the size within one tick keeps mtime and ctime too, and a
stale cache would silently decide for root. Comparing a few KiB costs microseconds.

Anything odd about the cache (missing, corrupt, a link, not root's, another file's,
values JSON cannot carry exactly) means it is not used and the YAML is parsed; writing
it is best effort (a read-only /etc only loses the cache).
"""

from __future__ import annotations

import math
import os
from typing import Any

VERSION = 1
MISS = object()             # lookup found nothing usable
_LIMIT = 4 << 20            # the config is at most 1 MiB; its cache holds it and its values


def cache_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.cache")


def lookup(path: str, text: str) -> Any:
    """The values parsed from `text` (the config file `path` as just read), or MISS."""
    import json

    from vtorque.errors import NodeError
    from vtorque.files import read_owned
    try:
        data = json.loads(read_owned(cache_path(path), limit=_LIMIT))
    except (OSError, ValueError, NodeError, RecursionError):
        return MISS
    if (not isinstance(data, dict) or data.get("version") != VERSION
            or data.get("path") != path or data.get("text") != text or "raw" not in data):
        return MISS
    raw = data["raw"]
    return raw if plain(raw) else MISS


def store(path: str, text: str, raw: Any) -> bool:
    """Remember `raw` (what YAML made of `text`) for `path`; False when not written
    (values JSON cannot carry exactly, or the directory refuses the file)."""
    if not plain(raw):
        return False
    import json

    from vtorque.errors import NodeError
    from vtorque.files import atomic_write
    try:
        body = json.dumps({"version": VERSION, "path": path, "text": text, "raw": raw},
                          allow_nan=False)
        atomic_write(cache_path(path), body, mode=0o600)
    except (OSError, ValueError, NodeError, RecursionError):
        return False
    return True


def plain(value: Any, depth: int = 0) -> bool:
    """Whether JSON carries `value` exactly: mappings with text keys, lists, text, whole
    and finite numbers, booleans, null. (YAML can also make dates, bytes, sets and
    non-text keys; such a file is simply parsed every time.)"""
    if depth > 32:
        return False
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return all(type(key) is str and plain(item, depth + 1)
                   for key, item in value.items())
    return False
