"""Guest addresses: one block of consecutive addresses per job, rank r at block start + r.

The block is allocated once per job, cluster-wide, by whichever node's prologue comes
first, in `<batch.shared_state_dir>/addresses.json` under a lock on the shared file system;
the others find it there. Every guest's address then follows from the job and its rank
alone, so every node can write the whole job's /etc/hosts without asking anyone, and
nobody polls ARP tables or DHCP leases (vTorque's weak spot). The mother superior's
epilogue releases the block; the reaper releases blocks of jobs that no longer exist.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from vtorque.config import Config
from vtorque.errors import NodeError, ResourceError
from vtorque.ledger import Ledger

ALLOCATIONS = "addresses.json"


@dataclass(frozen=True)
class AddressBlock:
    job_id: str
    first: int        # integer form of the first address
    size: int
    prefix: int       # prefix length of the guest subnet
    gateway: str | None

    def address(self, rank: int) -> str:
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} outside the job's {self.size} addresses")
        return str(ipaddress.IPv4Address(self.first + rank))


def _pool(config: Config) -> tuple[ipaddress.IPv4Network, int, int]:
    net = ipaddress.IPv4Network(config.network.subnet)
    first = int(net.network_address) + config.network.pool_first
    last = int(net.network_address) + config.network.pool_last
    if last >= int(net.broadcast_address) or first <= int(net.network_address):
        raise NodeError(f"network.pool_first/pool_last fall outside {net}")
    return net, first, last


def _ledger(config: Config) -> Ledger:
    base = config.batch.shared_state_dir
    return Ledger(os.path.join(base, ALLOCATIONS), "address allocations",
                  lock_path=os.path.join(base, ".addresses.lock"),
                  check=lambda v: [int(v[0]), int(v[1])])


def allocate(config: Config, job_id: str, size: int) -> AddressBlock:
    """The job's block (allocated now if it has none): first fit in the pool."""
    net, first, last = _pool(config)
    gateway = config.network.gateway
    with _ledger(config).change() as table:
        if job_id in table:
            start, have = table[job_id]
            if have < size:
                raise NodeError(f"job {job_id} holds {have} addresses but needs {size}")
            return AddressBlock(job_id, start, have, net.prefixlen, gateway)
        start = first
        for used_start, used_size in sorted(table.values()):
            if start + size <= used_start:
                break
            start = max(start, used_start + used_size)
        if start + size - 1 > last:
            raise ResourceError(f"no {size} free guest addresses left in {net} "
                                f"(network.pool_first..pool_last); running jobs hold "
                                f"{sum(s for _, s in table.values())}")
        table[job_id] = [start, size]
        return AddressBlock(job_id, start, size, net.prefixlen, gateway)


def release(config: Config, job_id: str) -> None:
    """Return the job's block to the pool; a job without one is fine."""
    with _ledger(config).change(create=False) as table:
        table.pop(job_id, None)


def allocated_jobs(config: Config) -> list[str]:
    """Jobs currently holding a block (for the reaper)."""
    return sorted(_ledger(config).read())
