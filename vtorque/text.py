"""Text that crosses a trust boundary: values a user chose, echoed into root's log, a job's
error file, a node note or a shared status file, are made one bounded line first, so no
user can forge log lines or flood a file. A leaf module."""

from __future__ import annotations

import re

# Control characters (C0, DEL, C1), line and paragraph separators, and what makes a line
# read other than it is: bidirectional overrides and isolates, zero-width characters, and
# lone surrogates (from undecodable bytes), which would not even encode for the output.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e"
                      "\u2060-\u2069\ufeff\ud800-\udfff]")
ELLIPSIS = "..."


def one_line(text: object, limit: int = 200) -> str:
    """`text` as one line: control characters become spaces, runs of white space one
    space, at most `limit` characters (cut with '...')."""
    line = " ".join(_CONTROL.sub(" ", str(text)).split())
    if len(line) > limit:
        line = line[:max(limit - len(ELLIPSIS), 0)].rstrip() + ELLIPSIS
    return line


def shown(value: object, limit: int = 40) -> str:
    """A user's value for a message: one bounded line in quotes."""
    return "'" + one_line(value, limit) + "'"
