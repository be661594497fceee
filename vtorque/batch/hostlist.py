"""Slurm host lists (`n[1-3,5],gpu[01-02]`) expanded as `scontrol show hostnames` does,
bounded, with every name checked. Pure functions."""

from __future__ import annotations

import re

from vtorque.batch.base import check_node_name, count_id_ranges
from vtorque.errors import NodeError
from vtorque.text import one_line

HOSTLIST_MAX = 65536                # more hosts than any allocation: a broken expression
_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")
_SEPARATORS = frozenset(", \t\r\n")


def expand_hostlist(text: str, limit: int = HOSTLIST_MAX) -> list[str]:
    """A Slurm host list -> host names, in Slurm's order (as `scontrol show hostnames`).

    `n[1-3,5],gpu[01-02]` -> n1 n2 n3 n5 gpu01 gpu02. Expressions are separated by commas
    or white space outside brackets; a range keeps the width of its lower bound
    (`n[098-102]`, `n[01-3]` -> n01 n02 n03); several bracket groups multiply
    (`a[1-2]b[3-4]` -> a1b3 a1b4 a2b3 a2b4); duplicates are kept. Text after the last
    bracket, descending or empty ranges and unbalanced brackets are refused (scontrol
    refuses them too), as is a list of more than `limit` hosts.
    """
    hosts: list[str] = []
    for expr in _split_top(text):
        for host in _expand_one(expr, text, limit - len(hosts)):
            check_node_name(host, "slurm")
            hosts.append(host)
    return hosts


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    buf: list[str] = []
    for char in text:
        if char == "[":
            depth += 1
            if depth > 1:
                raise NodeError(f"slurm: nested brackets in host list {one_line(text, 80)!r}")
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeError(f"slurm: unbalanced ']' in host list {one_line(text, 80)!r}")
        if depth == 0 and char in _SEPARATORS:
            if buf:
                parts.append("".join(buf))
            buf = []
            continue
        buf.append(char)
    if depth:
        raise NodeError(f"slurm: unbalanced '[' in host list {one_line(text, 80)!r}")
    if buf:
        parts.append("".join(buf))
    return parts


def _expand_one(expr: str, text: str, room: int) -> list[str]:
    # expr = (prefix [ranges])* prefix? ; a literal may not follow the last bracket.
    pieces = re.split(r"\[([^\]]*)\]", expr)
    literals, groups = pieces[0::2], pieces[1::2]
    if groups and literals[-1]:
        raise NodeError(f"slurm: text after ']' in host list {one_line(text, 80)!r}")
    out = [""]
    for index, group in enumerate(groups):
        values = _expand_ranges(group, text)
        prefix = literals[index]
        if len(out) * len(values) > room:
            raise NodeError(f"slurm: host list {one_line(text, 60)!r} names more than "
                            f"{HOSTLIST_MAX} hosts")
        out = [head + prefix + value for head in out for value in values]
    if not groups:
        out = [literals[0]]
    if len(out) > room:
        raise NodeError(f"slurm: host list {one_line(text, 60)!r} names more than "
                        f"{HOSTLIST_MAX} hosts")
    return out


def _expand_ranges(group: str, text: str) -> list[str]:
    values: list[str] = []
    for item in group.split(","):
        match = _RANGE.fullmatch(item.strip())
        if not match:
            raise NodeError(f"slurm: invalid range {one_line(item, 40)!r} in host list "
                            f"{one_line(text, 80)!r}")
        low_text = match.group(1)
        low = int(low_text)
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise NodeError(f"slurm: descending range {one_line(item, 40)!r} in host list "
                            f"{one_line(text, 80)!r}")
        if high - low >= HOSTLIST_MAX:
            raise NodeError(f"slurm: host list {one_line(text, 60)!r} names more than "
                            f"{HOSTLIST_MAX} hosts")
        width = len(low_text)
        values.extend(str(number).zfill(width) for number in range(low, high + 1))
    return values


def count_ids(text: str) -> int:
    """`0-3,8,10-11` (CPU_IDs) -> 7."""
    try:
        return count_id_ranges(text)
    except ValueError:
        raise NodeError(f"slurm: cannot read the CPU id list {one_line(text, 80)!r}") from None
