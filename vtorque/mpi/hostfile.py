"""Pure builders for the files that make a job's guests one cluster: /etc/hosts lines,
Open MPI's hostfile, a PBS_NODEFILE, known_hosts with pinned host keys, an ssh_config.

Guests are listed in rank order; ranks follow the batch system's node order (node i holds
ranks i*vms_per_node ...), so rank 0 (where the job script runs) comes first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GuestEntry:
    rank: int
    hostname: str
    address: str | None
    slots: int
    host_key: str | None = None       # "ssh-ed25519 AAAA..." (public)


def hosts_lines(guests: Sequence[GuestEntry]) -> str:
    return "".join(f"{g.address} {g.hostname}\n" for g in guests if g.address)


def openmpi_hostfile(guests: Sequence[GuestEntry]) -> str:
    """Open MPI's format: `name slots=N`, one line per guest, rank 0 first."""
    return "".join(f"{g.hostname} slots={g.slots}\n" for g in sorted(guests, key=_rank))


def nodefile(guests: Sequence[GuestEntry]) -> str:
    """PBS_NODEFILE style: one line per slot, guests in rank order."""
    return "".join(f"{g.hostname}\n" * g.slots for g in sorted(guests, key=_rank))


def known_hosts(guests: Sequence[GuestEntry]) -> str:
    """Every guest's pinned host key, under its name and its address."""
    lines = []
    for g in sorted(guests, key=_rank):
        if g.host_key:
            names = g.hostname + (f",{g.address}" if g.address else "")
            lines.append(f"{names} {g.host_key}\n")
    return "".join(lines)


def ssh_config(user: str | None, identity: str, known_hosts_path: str,
               guests: Sequence[GuestEntry] = ()) -> str:
    """The one SSH client config of a job's owner, on the node (to log into the guests)
    and inside the guests (mpirun between them): the job's key, only the job's pinned host
    keys, never a question (batch jobs have no terminal), never a prompt to trust a new
    key. Guest names map to their addresses, so no resolver needs to know them; `user`
    None: the login name is the local one (inside the guests)."""
    blocks = "".join(f"Host {g.hostname}\n    HostName {g.address}\n"
                     for g in sorted(guests, key=_rank) if g.address)
    return blocks + (
        "Host *\n"
        + (f"    User {user}\n" if user else "")
        + f"    IdentityFile {identity}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {known_hosts_path}\n"
        "    GlobalKnownHostsFile none\n"
        "    StrictHostKeyChecking yes\n"
        "    BatchMode yes\n"
        "    LogLevel ERROR\n"
        "    ConnectTimeout 60\n"
        # A guest that dies mid-job ends the session within a minute, not never.
        "    ServerAliveInterval 15\n"
        "    ServerAliveCountMax 4\n"
    )


def _rank(guest: GuestEntry) -> int:
    return guest.rank
