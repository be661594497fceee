"""Host directories a job's guests see at the same paths: which, under what tag, and the
rules a path must follow to be mounted in a guest (pure: no I/O here).

A share is a 9p file system QEMU serves from the node (libvirt `<filesystem>`, accessmode
passthrough). QEMU runs under the job owner's identity (vm/identity.py), so whatever the
guest does through a share is done on the node as the owner: files it writes are the
owner's, and root inside the guest can read or write nothing the owner could not.

Three kinds, mounted in this order of precedence:

- the job's working directory (where the job was submitted from): a user error when it
  cannot be shared, since the job would run without its files;
- the owner's home directory: dropped when it is not there or not the owner's to read
  (sites whose compute nodes carry no homes), the guest's account then gets a local one;
- the site's shares (config key batch.shares: /workspace, /scratch, /opt:ro, ...): the
  node's fault when one is missing, dropped when the owner may not read it.

A share inside another share (of the same or a stricter mode) is dropped once both are
known to be readable by the owner: the outer one already shows it (an outer one QEMU
cannot open, such as a 0711 /home, does not hide the homes inside it). Paths that would
hide the guest's own system (/usr, /etc, ...) are never mount points.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtorque.config.schema import share_path_problem as path_problem
from vtorque.errors import Unsupported

WORKDIR, HOME, SITE = "workdir", "home", "site"
TAG_PREFIX = "vtshare"


@dataclass(frozen=True)
class ShareSpec:
    """One host directory in every guest of the job."""
    tag: str            # the 9p mount tag (libvirt <target dir=...>)
    source: str         # the node's directory
    target: str         # where the guest mounts it (the same path)
    readonly: bool
    origin: str         # workdir | home | site


def _inside(inner: str, outer: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def plan_shares(*, workdir: str | None, home: str | None,
                site: tuple[tuple[str, bool], ...] = ()) -> tuple[ShareSpec, ...]:
    """Every share the job asks for, outer ones first (each path once), before they are
    checked against what the owner may read (vm/identity.py) and `collapse`d.

    `workdir` and `home` are the node's real paths (symlinks resolved by the caller);
    `site` is (path, readonly) pairs from the config. Raises Unsupported when the working
    directory cannot be a mount point in a guest; a home that cannot is left out."""
    wanted: list[tuple[str, bool, str]] = []
    if workdir is not None:
        problem = path_problem(workdir)
        if problem:
            raise Unsupported(f"the job's working directory {workdir[:200]!r} cannot be "
                              f"shared with its guests ({problem}); submit the job from "
                              "another directory")
        wanted.append((workdir, False, WORKDIR))
    if home is not None and path_problem(home) is None:
        wanted.append((home, False, HOME))
    for path, readonly in site:
        wanted.append((path, readonly, SITE))
    kept: list[tuple[str, bool, str]] = []
    for path, readonly, origin in wanted:
        if not any(p == path for p, _r, _o in kept):   # the same directory: first wins
            kept.append((path, readonly, origin))
    kept.sort(key=lambda s: (s[0].count("/"), s[0]))
    return _numbered(ShareSpec("", path, path, readonly, origin)
                     for path, readonly, origin in kept)


def collapse(shares: tuple[ShareSpec, ...]) -> tuple[ShareSpec, ...]:
    """`shares` without those an enclosing share of the same or a stricter mode already
    shows (a writable working directory inside a read-only share stays)."""
    def covered(share: ShareSpec) -> bool:
        return any(_inside(share.source, o.source) and o.source != share.source
                   and (not o.readonly or share.readonly) for o in shares)
    return _numbered(s for s in shares if not covered(s))


def without(shares: tuple[ShareSpec, ...], dropped: set[str]) -> tuple[ShareSpec, ...]:
    """`shares` without those whose source is in `dropped`, tags numbered afresh."""
    return _numbered(s for s in shares if s.source not in dropped)


def _numbered(shares) -> tuple[ShareSpec, ...]:
    return tuple(ShareSpec(f"{TAG_PREFIX}{i}", s.source, s.target, s.readonly, s.origin)
                 for i, s in enumerate(shares))
