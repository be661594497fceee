"""The neutral job context and the small interface every batch-system adapter implements.

Adapters (torque.py, openpbs.py, slurm.py) turn their scheduler's contract into a
JobContext read back from the batch server itself, never from files or environment the
user controls; the hooks work on JobContext only.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vtorque import proc
from vtorque.errors import CommandError, NodeError


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

    @property
    def is_vm_job(self) -> bool:
        return bool(self.vm_request)


class UnknownJobError(NodeError):
    """The batch server does not know the job (never existed, or purged from its history).

    A NodeError for the hooks (the server may lag), but the reaper can tell "gone" from
    "server unreachable" (plain NodeError/CommandError) and only reap on this one.
    """

    def __init__(self, scheduler: str, job_id: str, detail: str = ""):
        self.scheduler = scheduler
        self.job_id = job_id
        msg = f"{scheduler}: job {job_id} is unknown to the batch server"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class BatchSystem(ABC):
    """One scheduler: how to read a job back and how to take a node out of service."""

    name: str = ""
    commands: tuple[str, ...] = ()     # executables that identify it in bin_dir

    def __init__(self, bin_dir: str, timeout: float = 30.0):
        self.bin_dir = bin_dir
        self.timeout = timeout

    def command(self, name: str) -> str:
        """Absolute path of one of the scheduler's commands (never searched on PATH)."""
        path = os.path.join(self.bin_dir, name)
        if not _is_executable(path):
            raise NodeError(f"{self.name}: {path} not found or not executable "
                            "(config key batch.bin_dir)")
        return path

    @abstractmethod
    def job(self, job_id: str) -> JobContext:
        """The job as the batch server reports it; NodeError when it cannot be read,
        UnknownJobError when the server says the job does not exist."""

    @abstractmethod
    def offline_node(self, node: str, reason: str) -> None:
        """Take `node` out of service with a note an admin can read."""

    def query(self, argv: Sequence[str], job_id: str) -> str:
        """Run a read-only job query (clean environment, self.timeout) and return stdout.

        'Unknown Job Id' on stderr (Torque and PBS print it alike) becomes UnknownJobError;
        any other failure a CommandError with the command's last stderr line.
        """
        try:
            done = proc.run(argv, timeout=self.timeout, check=False)
        except UnicodeDecodeError as exc:
            raise NodeError(f"{self.name}: {argv[0]} printed bytes that are not UTF-8 for "
                            f"job {job_id}: {exc.reason}") from None
        if done.returncode != 0:
            if "unknown job id" in done.stderr.lower():
                raise UnknownJobError(self.name, job_id, _last_line(done.stderr))
            raise CommandError(list(argv), done.returncode, done.stdout, done.stderr)
        return done.stdout


# --- helpers shared by the adapters -----------------------------------------------------------

# A host name as batch systems print it in exec_host / node lists. No leading '-' (it is
# passed to pbsnodes as an argument), no '/', ':', spaces or control characters.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
# A job id as schedulers print it: 123.server, 12[1].server, 12[].server, 4711, 12_3.
_JOB_ID = re.compile(r"[0-9][A-Za-z0-9._\[\]@+-]{0,254}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
NOTE_PREFIX = "vtorque: "
NOTE_MAX = 200


def check_node_name(node: str, scheduler: str = "batch") -> str:
    if not isinstance(node, str) or not _NODE_NAME.fullmatch(node):
        raise NodeError(f"{scheduler}: {node!r} is not a valid node name")
    return node


def check_job_id(job_id: str, scheduler: str = "batch") -> str:
    """Refuse ids no scheduler prints before they reach an argv (e.g. '-x', 'a b')."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or ".." in job_id:
        raise NodeError(f"{scheduler}: {job_id!r} is not a job id this batch system prints")
    return job_id


def node_note(reason: str) -> str:
    """An admin-readable node note: one line, no control characters, prefixed, at most
    NOTE_MAX characters in all (prefix included)."""
    text = " ".join(_CONTROL.sub(" ", str(reason)).split())
    note = NOTE_PREFIX + (text or "node taken offline")
    if len(note) > NOTE_MAX:
        note = note[:NOTE_MAX - 3].rstrip() + "..."
    return note


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


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


# --- registry and detection ------------------------------------------------------------------

_ID_RANGE = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?")


def count_id_ranges(text: str) -> int:
    """`0-3,8,10-11` (Torque exec_host slots, Slurm CPU_IDs) -> 7; ValueError otherwise."""
    total = 0
    for item in text.split(","):
        match = _ID_RANGE.fullmatch(item.strip())
        if not match:
            raise ValueError(f"not a list of numbers and ranges: {text!r}")
        low = int(match.group(1))
        high = int(match.group(2)) if match.group(2) is not None else low
        if high < low:
            raise ValueError(f"descending range in {text!r}")
        total += high - low + 1
    return total


_REGISTRY: dict[str, type[BatchSystem]] = {}


def register(cls: type[BatchSystem]) -> type[BatchSystem]:
    _REGISTRY[cls.name] = cls
    return cls


def _load_adapters() -> None:
    """Import every adapter module so it registers itself; slurm.py only once it exists."""
    from vtorque.batch import openpbs, torque  # noqa: F401  (registration)
    if "slurm" not in _REGISTRY and importlib.util.find_spec("vtorque.batch.slurm"):
        importlib.import_module("vtorque.batch.slurm")


# Executables that only one of the PBS family ships (checked in bin_dir):
# - OpenPBS / PBS Professional: pbs_rsub, pbs_rstat (advance reservations) and
#   pbs_release_nodes (openpbs src/cmds/pbs_rsub.c, pbs_rstat.c, pbs_release_nodes.c;
#   installed in $PBS_EXEC/bin). Torque has no reservation commands (Moab does that).
# - Torque: pbs_track, qchkpt, qgpumode (adaptivecomputing/torque src/cmds/pbs_track.c,
#   qchkpt.c, qgpumode.c; installed in $PREFIX/bin), momctl (usually sbin, checked too).
#   OpenPBS has pbs_attach instead of pbs_track and no qchkpt/qgpumode/momctl.
# Both ship qsub, qstat, qmgr, pbsnodes and pbsdsh, so those cannot tell them apart.
OPENPBS_MARKERS = ("pbs_rsub", "pbs_rstat", "pbs_release_nodes")
TORQUE_MARKERS = ("pbs_track", "qchkpt", "qgpumode", "momctl")
# Slurm's own commands; checked first because Slurm's optional slurm-torque package
# installs qsub/qstat/pbsnodes wrappers next to them.
SLURM_MARKERS = ("sbatch", "scontrol")


def detect(bin_dir: str, timeout: float = 10.0) -> str:
    """The name of the batch system whose commands are in bin_dir.

    Cheap file checks first; only when neither family's marker is there, ask
    `qstat --version` (Torque prints 'Version: 6.1.2', PBS 'pbs_version = 23.06.06').
    """
    _load_adapters()

    def has(name: str) -> bool:
        return _is_executable(os.path.join(bin_dir, name))

    # Slurm: only when its adapter exists (vtorque/batch/slurm.py, registered as "slurm").
    if "slurm" in _REGISTRY and all(has(c) for c in SLURM_MARKERS):
        return "slurm"
    if not (has("qstat") and has("pbsnodes")):
        raise NodeError(f"no batch system found in {bin_dir}: no qstat and pbsnodes"
                        + (", no sbatch and scontrol" if "slurm" in _REGISTRY else "")
                        + " (config keys batch.bin_dir, batch.system)")
    pbs = any(has(m) for m in OPENPBS_MARKERS)
    trq = any(has(m) for m in TORQUE_MARKERS)
    if pbs != trq:
        return "openpbs" if pbs else "torque"
    try:
        done = proc.run([os.path.join(bin_dir, "qstat"), "--version"], timeout=timeout,
                        check=False)
        text = (done.stdout + done.stderr).lower()
    except (NodeError, UnicodeDecodeError):
        text = ""
    if "pbs_version" in text:
        return "openpbs"
    if re.search(r"^\s*version:", text, re.MULTILINE):
        return "torque"
    raise NodeError(f"cannot tell Torque from OpenPBS by the commands in {bin_dir}; "
                    "set batch.system to torque or openpbs")


def get(name: str, bin_dir: str, timeout: float = 30.0) -> BatchSystem:
    """The adapter called `name`, or for `auto` the one detect() finds in bin_dir.

    An explicit name (config batch.system) always wins over detection.
    """
    if name == "auto":
        _load_adapters()
        name = detect(bin_dir)
    elif name not in _REGISTRY and importlib.util.find_spec(f"vtorque.batch.{name}"):
        importlib.import_module(f"vtorque.batch.{name}")  # just the one a hook needs
    try:
        cls = _REGISTRY[name]
    except KeyError:
        _load_adapters()
        raise NodeError(f"unknown batch system {name!r} (known: "
                        + ", ".join(sorted(_REGISTRY)) + ")") from None
    return cls(bin_dir, timeout=timeout)


def registered() -> Mapping[str, type[BatchSystem]]:
    """Every adapter by name (for tests that run each backend through the same cases)."""
    _load_adapters()
    return dict(_REGISTRY)
