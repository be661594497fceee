"""The neutral job context and the small interface every batch-system adapter implements.

Adapters (torque.py, openpbs.py, slurm.py) turn their scheduler's contract into a
JobContext read back from the batch server itself, never from files or environment the
user controls; the hooks work on JobContext only.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vtorque import proc
from vtorque.errors import CommandError, NodeError, UnknownJobError
from vtorque.text import one_line

if TYPE_CHECKING:       # made only where a record is read (batch/allocation.py)
    from vtorque.batch.allocation import NodeAllocation


@dataclass(frozen=True)
class JobContext:
    """What the root side knows about a job, as the batch server reports it."""
    scheduler: str                    # torque | openpbs | slurm
    job_id: str                       # the id the caller asked for (hook argument), verbatim
    user: str
    group: str | None
    job_name: str
    queue: str | None
    nodes: tuple[str, ...]            # allocated hosts, batch order, unique; [0] = mother superior
    slots: tuple[int, ...]            # slots (cores) on each of `nodes`
    vm_request: str | None            # encoded -vm pairs (request.JOB_VARIABLE); None: no VMs
    workdir: str | None               # submission directory (PBS_O_WORKDIR / WorkDir)
    run_count: int = 0                # times the job has been started (requeues + 1)
    variables: Mapping[str, str] = field(default_factory=dict)
    state: str | None = None          # scheduler's own job state letter/word (R, E, C, F, ...)
    admin_note: str | None = None     # the note an admin (or vtorque) left on the job
    uid: int | None = None            # the owner's uid, when the server names it (Slurm)
    created: int | None = None        # the server's creation (submit) time, epoch seconds
    # What the job holds on each of `nodes` (same order); empty when the record does not
    # say (or, for a job without VMs, could not be read: nothing is decided from it).
    allocations: tuple[NodeAllocation, ...] = ()

    @property
    def is_vm_job(self) -> bool:
        return bool(self.vm_request)

    def allocation(self, name: str) -> NodeAllocation | None:
        """What the job holds on node `name` (a short name matches its FQDN); None when
        the record did not say. NodeError when `name` is not one of the job's nodes."""
        index = self.node_index(name)
        return self.allocations[index] if index < len(self.allocations) else None

    def node_index(self, name: str) -> int:
        """Position of node `name` in the job's node list; a short name matches its FQDN.
        NodeError when this node is not (unambiguously) one of the job's."""
        return node_index(name, self.nodes)


def node_index(name: str, nodes: Sequence[str]) -> int:
    """Position of `name` in `nodes`; a short name matches its FQDN."""
    if name in nodes:
        return list(nodes).index(name)
    short = name.split(".")[0]
    matches = [i for i, n in enumerate(nodes) if n.split(".")[0] == short]
    if len(matches) == 1:
        return matches[0]
    raise NodeError(f"this node ({name}) is not among the job's nodes: "
                    + one_line(", ".join(nodes), 200))


class BatchSystem(ABC):
    """One scheduler: how to read a job back and how to take a node out of service."""

    name: str = ""
    commands: tuple[str, ...] = ()     # executables that identify it in bin_dir

    def __init__(self, bin_dir: str, timeout: float = 30.0):
        self.bin_dir = bin_dir
        self.timeout = timeout

    def command(self, name: str) -> str:
        """Absolute path of one of the scheduler's commands (never searched on PATH).
        As root, only a command nobody else can have changed (files.verify_path): root
        runs it for every job."""
        path = os.path.join(self.bin_dir, name)
        if not is_executable(path):
            raise NodeError(f"{self.name}: {path} not found or not executable "
                            "(config key batch.bin_dir)")
        if os.geteuid() == 0:
            from vtorque.files import FILE, verify_path
            verify_path(path, FILE)
        return path

    @abstractmethod
    def job(self, job_id: str) -> JobContext:
        """The job as the batch server reports it; NodeError when it cannot be read,
        UnknownJobError when the server says the job does not exist."""

    @abstractmethod
    def offline_node(self, node: str, reason: str) -> None:
        """Take `node` out of service with a note an admin can read."""

    def note_job(self, job_id: str, reason: str, previous: str | None = None) -> bool:
        """Leave `reason` in the job's record where its owner and `qstat`/`sacct` users
        read it, in a place only an administrator can write. False when this scheduler
        has no such place root can reach from a node's hook (the hook itself then
        carries the message: OpenPBS's hook script sets the job's comment)."""
        return False

    # How the scheduler's query commands say "no such job" (lowercased stdout+stderr).
    unknown_job_patterns: tuple[str, ...] = (r"unknown job id",)

    def query_env(self) -> dict[str, str]:
        """The environment of every batch command: clean, plus what the scheduler needs.
        TZ=UTC: times the server prints (a job's creation time) read the same on every
        node, whatever each node's own time zone."""
        return proc.clean_env(QUERY_ENV)

    def query(self, argv: Sequence[str], job_id: str) -> str:
        """Run a read-only job query (clean environment, self.timeout) and return stdout.

        Output matching `unknown_job_patterns` becomes UnknownJobError; any other failure
        a CommandError with the command's last stderr line; bytes that are not UTF-8 a
        NodeError (the batch system's output is not trusted to be well formed).
        """
        try:
            done = proc.run(argv, timeout=self.timeout, check=False, env=self.query_env())
        except UnicodeDecodeError as exc:
            raise NodeError(f"{self.name}: {argv[0]} printed bytes that are not UTF-8 for "
                            f"job {job_id}: {exc.reason}") from None
        if done.returncode != 0:
            text = (done.stderr + "\n" + done.stdout).lower()
            if any(re.search(p, text) for p in self.unknown_job_patterns):
                raise UnknownJobError(self.name, job_id,
                                      one_line(done.stderr.strip() or done.stdout, 120))
            raise CommandError(list(argv), done.returncode, done.stdout, done.stderr)
        return done.stdout

    def run(self, argv: Sequence[str]) -> None:
        """Run an acting batch command (offline a node, note or cancel a job)."""
        proc.run(argv, timeout=self.timeout, env=self.query_env())


# --- helpers shared by the adapters -----------------------------------------------------------

QUERY_ENV = {"TZ": "UTC"}


class JsonObject(dict):
    """A JSON object as read by load_json: `repeated` names every key it held twice."""
    repeated: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, object]]) -> JsonObject:
    obj = JsonObject()
    repeated = set()
    for key, value in pairs:
        if key in obj:
            repeated.add(key)
        obj[key] = value
    obj.repeated = frozenset(repeated)
    return obj


def load_json(text: str, **kwargs):
    """json.loads, except that no repeated key is lost silently: each object is a
    JsonObject naming the keys it held more than once (the caller decides which of them
    matter). ValueError as json.loads."""
    import json
    return json.loads(text, object_pairs_hook=_pairs, **kwargs)


def repeated(obj: object) -> frozenset[str]:
    """The keys a JSON object from load_json held twice (none for anything else)."""
    return obj.repeated if isinstance(obj, JsonObject) else frozenset()

# A host name as batch systems print it in exec_host / node lists. No leading '-' (it is
# passed to pbsnodes as an argument), no '/', ':', spaces or control characters.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# A user or group name as batch servers print it (Job_Owner, euser, UserId).
USER_NAME = re.compile(r"[A-Za-z0-9_][^\s/:\x00-\x1f\x7f-\x9f\u2028\u2029]{0,255}")
NOTE_PREFIX = "vtorque: "
NOTE_MAX = 200


def check_node_name(node: str, scheduler: str = "batch") -> str:
    if not isinstance(node, str) or not _NODE_NAME.fullmatch(node):
        raise NodeError(f"{scheduler}: {one_line(repr(node), 80)} is not a valid node name")
    return node


def check_user_name(name: str) -> bool:
    """Whether `name` can be a user or group name (never an option: no leading '-')."""
    return bool(name) and USER_NAME.fullmatch(name) is not None and not name.startswith("-")


def note(reason: str, limit: int = NOTE_MAX) -> str:
    """An admin-readable note: one line, prefixed 'vtorque: ' (once), at most `limit`
    characters in all."""
    text = one_line(reason, 10 * limit)
    if text.startswith(NOTE_PREFIX.strip()):
        text = text[len(NOTE_PREFIX.strip()):].strip()
    return one_line(NOTE_PREFIX + (text or "node taken offline"), limit)


def node_note(reason: str) -> str:
    """A node's offline/drain note (pbsnodes -N/-C, scontrol reason)."""
    return note(reason, NOTE_MAX)


def pick_job(reported: Sequence[str], job_id: str) -> str | None:
    """Which of the ids a server reported is `job_id`.

    Exact match first; then `123` or `123.head` for `123.head.domain` (the server appends
    its full name); then, when exactly one reported id has the same sequence part, that one
    (the caller used a different spelling of the server name).
    """
    if job_id in reported:
        return job_id
    longer = [r for r in reported if r.startswith(job_id + ".")]
    if len(longer) == 1:
        return longer[0]
    seq = job_id.split(".", 1)[0]
    same = [r for r in reported if r.split(".", 1)[0] == seq]
    if len(same) == 1:
        return same[0]
    return None


_ID_RANGE = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")


def count_id_ranges(text: str) -> int:
    """`0-3,8,10-11` (Torque exec_host slots, Slurm CPU_IDs) -> 7; ValueError otherwise."""
    total = 0
    for item in text.split(","):
        match = _ID_RANGE.fullmatch(item.strip())
        if not match:
            raise ValueError(f"not a list of numbers and ranges: {one_line(text, 60)!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"descending range in {one_line(text, 60)!r}")
        total += high - low + 1
    return total


ID_LIST_MAX = 1 << 16         # CPU ids on one node: far more than any node has


def expand_id_ranges(text: str, limit: int = ID_LIST_MAX) -> tuple[int, ...]:
    """`0-3,8` -> (0, 1, 2, 3, 8), ascending, each once; ValueError for anything else or
    for more than `limit` ids (a range is counted before it is expanded)."""
    if count_id_ranges(text) > limit:
        raise ValueError(f"more than {limit} ids in {one_line(text, 60)!r}")
    ids: set[int] = set()
    for item in text.split(","):
        match = _ID_RANGE.fullmatch(item.strip())
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        ids.update(range(low, high + 1))
    return tuple(sorted(ids))


def is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
