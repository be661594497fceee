"""What the nodes record about a job, gathered for `vtorque status`, `ssh`, `console` and
`image remove`. Nothing here asks a daemon of our own: the batch system's record of the
job, every node's hand-off status in the shared state directory (world-readable), the
job's address block, this node's events in its log, the owner's directory on the mother
superior and, for root, the job's libvirt domains on this node. Every source may be
missing or unreadable; what is gathered says which were not there.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import time
from dataclasses import dataclass, field
from typing import Any

from vtorque.cluster import handoff
from vtorque.config import Config
from vtorque.errors import UnknownJobError, VtorqueError
from vtorque.journal import JobPaths

EVENT_MARK = "vtorque-event"
# A line of the node's log as vtorque.log writes it: date, time, pid, level, message. Only
# a message that *starts* with the mark is an event, so a user's value quoted in another
# line (a refused request, say) can never pass for one.
_EVENT_LINE = re.compile(r"^\S+ \S+ \d+ INFO " + EVENT_MARK + r" (\{.*\})$")
LOG_TAIL_BYTES = 16 << 20
RECENT_SECONDS = 24 * 3600


@dataclass
class JobFacts:
    """Everything known about one job, from every source that answered."""
    job_id: str
    batch: Any = None                      # batch.base.JobContext, or None
    batch_problem: str | None = None       # why there is no record: unknown / unreachable
    unknown_to_batch: bool = False
    statuses: dict[str, handoff.NodeStatus] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)      # this node's, oldest first
    block: tuple[int, int] | None = None   # the job's address block (first, size)
    owner: str | None = None
    user_dir: str | None = None            # the owner's files on this node (rank 0's)
    domains: list | None = None            # root: this node's tagged domains of the job
    local_state: bool = False              # this node holds files of the job

    @property
    def recorded(self) -> bool:
        """Whether any node recorded anything of the job (beyond the batch system)."""
        return bool(self.statuses or self.events or self.user_dir or self.domains
                    or self.local_state)


def parse_events(text: str, job_id: str | None = None) -> list[dict]:
    """The events of the node's log text (of one job when given), in order (pure)."""
    out = []
    for line in text.splitlines():
        if EVENT_MARK not in line:
            continue
        match = _EVENT_LINE.match(line)
        if not match:
            continue
        try:
            event = json.loads(match.group(1))
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("job"), str) and \
                (job_id is None or event["job"] == job_id):
            out.append(event)
    return out


def read_events(config: Config, job_id: str | None = None) -> list[dict]:
    """This node's events (the last 16 MiB of its log; a log that cannot be read has
    none)."""
    try:
        with open(config.log_file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(size - LOG_TAIL_BYTES, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return []
    return parse_events(text, job_id)


def address_blocks(config: Config) -> dict[str, tuple[int, int]]:
    """Every job's address block (first address as an integer, size); {} when unreadable."""
    from vtorque.ledger import Ledger
    from vtorque.vm.addresses import ALLOCATIONS
    try:
        table = Ledger(os.path.join(config.batch.shared_state_dir, ALLOCATIONS),
                       "address allocations", check=lambda v: (int(v[0]), int(v[1]))).read()
    except (VtorqueError, OSError):
        return {}
    return dict(table)


def address(block: tuple[int, int] | None, rank: int) -> str | None:
    """Guest `rank`'s address in its job's block."""
    import ipaddress
    if block is None or not 0 <= rank < block[1]:
        return None
    return str(ipaddress.IPv4Address(block[0] + rank))


def batch_adapter(config: Config):
    """The batch system's adapter, or the reason there is none."""
    from vtorque.batch import registry
    try:
        return registry.get(config.batch.system, config.batch.bin_dir, timeout=15.0), None
    except VtorqueError as exc:
        return None, str(exc)


def owner_of(path: str) -> str | None:
    try:
        uid = os.lstat(path).st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return None


def gather(config: Config, job_id: str, adapter=None, adapter_problem: str | None = None,
           *, events: list[dict] | None = None, root: bool | None = None) -> JobFacts:
    """Every record of `job_id` this node can read (libvirt only for root)."""
    facts = JobFacts(job_id)
    if adapter is not None:
        try:
            facts.batch = adapter.job(job_id)
        except UnknownJobError as exc:
            facts.unknown_to_batch, facts.batch_problem = True, str(exc)
        except VtorqueError as exc:
            facts.batch_problem = str(exc)
    else:
        facts.batch_problem = adapter_problem or "no batch system configured"
    for node in handoff.nodes_left(config, job_id):
        status = handoff.read(config, job_id, node)
        if status is not None:
            facts.statuses[status.node or node] = status
    facts.events = [e for e in (read_events(config) if events is None else events)
                    if e.get("job") == job_id]
    facts.block = address_blocks(config).get(job_id)
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    facts.local_state = any(os.path.lexists(p) for p in (paths.job_dir, paths.user_dir))
    if os.path.isdir(paths.user_dir) and not os.path.islink(paths.user_dir):
        facts.user_dir = paths.user_dir
    facts.owner = _owner(facts)
    if (os.geteuid() == 0 if root is None else root) and (facts.local_state
                                                          or facts.statuses):
        facts.domains = _domains(config, job_id)
    return facts


def _owner(facts: JobFacts) -> str | None:
    if facts.batch is not None and facts.batch.user:
        return facts.batch.user
    for event in facts.events:
        if isinstance(event.get("user"), str):
            return event["user"]
    return owner_of(facts.user_dir) if facts.user_dir else None


def _domains(config: Config, job_id: str) -> list | None:
    from vtorque.node import node_name
    from vtorque.vm.host import Host
    try:
        with Host(config.libvirt_uri, retries=1) as host:
            return host.tagged_domains(job_id, node_name(config.node_name))
    except VtorqueError:
        return None


def known_jobs(config: Config, events: list[dict], *, root: bool,
               since: float | None = None) -> list[str]:
    """Jobs this node knows of: every job with a hand-off status (running anywhere in the
    cluster), with files here, or with an event here in the last day."""
    found: set[str] = set()
    for key in handoff.job_keys(config):
        for node in handoff.nodes_left_in(config, key):
            status = handoff.read_key(config, key, node)
            if status is not None and status.job_id:
                found.add(status.job_id)
    if root:
        found.update(_local_jobs(config))
    cutoff = (time.time() - RECENT_SECONDS) if since is None else since
    found.update(e["job"] for e in events if isinstance(e.get("t"), (int, float))
                 and e["t"] >= cutoff)
    return sorted(found, key=_job_sort_key)


def _local_jobs(config: Config) -> set[str]:
    from vtorque.journal import Journal
    out = set()
    try:
        entries = os.listdir(config.state_dir)
    except OSError:
        return out
    for entry in entries:
        if entry.startswith(".") or entry.endswith(".user"):
            continue
        for record in Journal(os.path.join(config.state_dir, entry, "journal.jsonl")).entries():
            if isinstance(record.get("job_id"), str):
                out.add(record["job_id"])
                break
    return out


def _job_sort_key(job_id: str) -> tuple:
    digits = re.match(r"\d*", job_id).group(0)
    return (int(digits) if digits else 0, job_id)


def resolve_id(job_id: str, candidates: list[str]) -> str:
    """The recorded spelling of a job id the user shortened (`123` for `123.server`):
    the one recorded id that starts with it and a dot; otherwise the id as given."""
    if job_id in candidates:
        return job_id
    longer = [c for c in candidates if c.startswith(job_id + ".")]
    return longer[0] if len(longer) == 1 else job_id


def me() -> str:
    """The calling user's name (or uid when it has none)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
