"""Per-job identities on the fabric, derived from the job alone (pure functions).

Every guest's virtual function gets a node GUID and a port GUID made of the configured
two-octet prefix, four octets of a hash of the job id and two octets of the guest's rank
(the node GUID has the top bit of those set). Any node can therefore compute every GUID
of the job, and the subnet manager's partition for the job needs no round trip. A per-job
partition key, when the site enables them, is handed out once per job, cluster-wide.
"""

from __future__ import annotations

import hashlib
import re

MAX_RANK = 0x7fff
# Full membership bit of a partition key (IBA 10.9.1): guests are full members of their
# job's partition, so they can talk to each other and to nobody else.
FULL_MEMBER = 0x8000


def _guid(prefix: str, job_id: str, low: int) -> str:
    digest = hashlib.blake2b(job_id.encode(), digest_size=4).digest()
    octets = [int(x, 16) for x in prefix.split(":")] + list(digest) + [low >> 8, low & 0xff]
    return ":".join(f"{b:02x}" for b in octets)


def port_guid(prefix: str, job_id: str, rank: int) -> str:
    """'02:76:xx:xx:xx:xx:RR:RR' for the guest of `rank`."""
    if not 0 <= rank <= MAX_RANK:
        raise ValueError(f"rank {rank} outside 0..{MAX_RANK}")
    return _guid(prefix, job_id, rank)


def node_guid(prefix: str, job_id: str, rank: int) -> str:
    if not 0 <= rank <= MAX_RANK:
        raise ValueError(f"rank {rank} outside 0..{MAX_RANK}")
    return _guid(prefix, job_id, 0x8000 | rank)


def as_hex(guid: str) -> str:
    """'02:76:..' -> '0x0276...' (OpenSM's notation)."""
    return "0x" + guid.replace(":", "")


def partition_name(job_id: str) -> str:
    """An OpenSM partition name for the job: letters, digits and '_' only."""
    return "vtorque_" + re.sub(r"[^A-Za-z0-9]", "_", job_id)[:48]


def partition_conf(job_id: str, pkey: int, guids: list[str]) -> str:
    """The job's partition in OpenSM's partitions.conf syntax: its guests full members,
    nobody else in it (to be merged into the subnet manager's configuration)."""
    members = ", ".join(f"{as_hex(g)}=full" for g in guids)
    return f"{partition_name(job_id)}=0x{pkey:04x}, ipoib : {members} ;\n"
