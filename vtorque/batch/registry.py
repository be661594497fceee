"""The adapters by name: register, get, detect (which batch system's commands are in
bin_dir). Importing this imports no adapter, nor the adapters' base (vsub reads only the
names below); get() imports just the one asked for."""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from vtorque.errors import NodeError

if TYPE_CHECKING:
    from vtorque.batch.base import BatchSystem

ADAPTER_MODULES = {"torque": "vtorque.batch.torque", "openpbs": "vtorque.batch.openpbs",
                   "slurm": "vtorque.batch.slurm"}
_REGISTRY: dict[str, type[BatchSystem]] = {}


def register(cls: type[BatchSystem]) -> type[BatchSystem]:
    _REGISTRY[cls.name] = cls
    return cls


def _load(name: str) -> type[BatchSystem] | None:
    """The adapter class `name`, importing its module (which registers it) on first use."""
    if name not in _REGISTRY and name in ADAPTER_MODULES:
        importlib.import_module(ADAPTER_MODULES[name])
    return _REGISTRY.get(name)


def _load_adapters() -> None:
    for name in ADAPTER_MODULES:
        _load(name)


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
    from vtorque.batch.base import is_executable

    def has(name: str) -> bool:
        return is_executable(os.path.join(bin_dir, name))

    if all(has(c) for c in SLURM_MARKERS):
        return "slurm"
    if not (has("qstat") and has("pbsnodes")):
        raise NodeError(f"no batch system found in {bin_dir}: no qstat and pbsnodes, no "
                        "sbatch and scontrol (config keys batch.bin_dir, batch.system)")
    pbs = any(has(m) for m in OPENPBS_MARKERS)
    trq = any(has(m) for m in TORQUE_MARKERS)
    if pbs != trq:
        return "openpbs" if pbs else "torque"
    qstat = os.path.join(bin_dir, "qstat")
    if os.geteuid() == 0:               # root runs it: only a qstat nobody else can change
        from vtorque.files import FILE, verify_path
        verify_path(qstat, FILE)
    import re

    from vtorque import proc
    try:
        done = proc.run([qstat, "--version"], timeout=timeout, check=False)
        text = (done.stdout + done.stderr).lower()
    except (NodeError, UnicodeDecodeError):
        text = ""
    if "pbs_version" in text:
        return "openpbs"
    if re.search(r"^[ \t]*version:", text, re.MULTILINE):
        return "torque"
    raise NodeError(f"cannot tell Torque from OpenPBS by the commands in {bin_dir}; "
                    "set batch.system to torque or openpbs")


def get(name: str, bin_dir: str, timeout: float = 30.0) -> BatchSystem:
    """The adapter called `name`, or for `auto` the one detect() finds in bin_dir.

    An explicit name (config batch.system) always wins over detection.
    """
    if name == "auto":
        name = detect(bin_dir)
    cls = _load(name)
    if cls is None:
        raise NodeError(f"unknown batch system {name!r} (known: "
                        + ", ".join(sorted(ADAPTER_MODULES)) + ")")
    return cls(bin_dir, timeout=timeout)


def resolve(name: str, bin_dir: str) -> str:
    """batch.system as a name: `auto` resolved by the commands in bin_dir."""
    return detect(bin_dir) if name == "auto" else name


def registered() -> Mapping[str, type[BatchSystem]]:
    """Every adapter by name (for tests that run each backend through the same cases)."""
    _load_adapters()
    return dict(_REGISTRY)
