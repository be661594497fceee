"""sbatch's memory and CPU requests raised so that each node holds the job's guests."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from vtorque.errors import UsageError
from vtorque.submit.sbatch_args import SbatchArgs, SbatchScript
from vtorque.submit.sbatch_table import SBATCH_MEM_ENV
from vtorque.submit.submission import Footprint

_SLURM_SIZE = re.compile(r"([0-9]{1,15})(?:([KMGTkmgt])[Bb]?)?")
_SLURM_SHIFT = {"k": -10, "m": 0, "g": 10, "t": 20}


def parse_slurm_size_mib(text: str, option: str) -> int:
    """A Slurm memory size (`4096`, `4G`, `4gb`, `512M`, `1024K`; bare = MB) -> MiB."""
    match = _SLURM_SIZE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"cannot read --{option}={text} (expected e.g. 4096, 4096M or 4G)")
    number, unit = int(match[1]), (match[2] or "m").lower()
    shift = _SLURM_SHIFT[unit]
    return number << shift if shift >= 0 else -((-number) >> -shift)


def _effective(cmdline: SbatchArgs, script: SbatchScript, names: Sequence[str],
               env_names: Mapping[str, str] | None = None
               ) -> tuple[str, str, str] | None:
    """(name, value, where) of the option sbatch will use among `names`: the command line
    (last), then SBATCH_* variables, then the script's directives (last)."""
    for option in reversed(cmdline.options):
        if option.names and option.names[-1] in names and option.value is not None:
            return option.names[-1], option.value, "command line"
    for variable, name in (env_names or {}).items():
        value = (cmdline.environ or {}).get(variable)
        if value and name in names:
            return name, value, f"${variable}"
    for line, option in reversed(script.options()):
        if option.names and option.names[-1] in names and option.value is not None:
            return option.names[-1], option.value, f"script line {line}"
    return None


def adjust_sbatch_resources(cmdline: SbatchArgs, script: SbatchScript, need: Footprint
                            ) -> tuple[list[str], list[str]]:
    """(options to add after the user's, notes): --mincpus and --mem (or --mem-per-cpu)
    raised so each node holds the guests plus the host's reserve."""
    added: list[str] = []
    notes: list[str] = []
    cpus = _effective(cmdline, script, ("mincpus",))
    if cpus is None:
        added.append(f"--mincpus={need.cores}")
    else:
        value = cpus[1].strip()
        if not value.isdigit() or len(value) > 9:
            raise UsageError(f"cannot read --mincpus={cpus[1]} ({cpus[2]})")
        if int(value) < need.cores:
            added.append(f"--mincpus={need.cores}")
            notes.append(f"--mincpus {value} -> {need.cores}")
    memory = _effective(cmdline, script, ("mem", "mem-per-cpu", "mem-per-gpu"),
                        SBATCH_MEM_ENV)
    if memory is None:
        added.append(f"--mem={need.memory_mib}M")
    elif memory[0] == "mem":
        have = parse_slurm_size_mib(memory[1], "mem")
        if have != 0 and have < need.memory_mib:       # 0: all of the node's memory
            added.append(f"--mem={need.memory_mib}M")
            notes.append(f"--mem {memory[1]} -> {need.memory_mib}M")
    elif memory[0] == "mem-per-cpu":
        per_cpu = -(-need.memory_mib // max(need.cores, 1))
        have = parse_slurm_size_mib(memory[1], "mem-per-cpu")
        if have < per_cpu:
            added.append(f"--mem-per-cpu={per_cpu}M")
            notes.append(f"--mem-per-cpu {memory[1]} -> {per_cpu}M")
    else:
        notes.append(f"--mem-per-gpu ({memory[2]}) is kept: vsub cannot tell whether each "
                     f"node gets the {need.memory_mib}M its guests and the host need; use "
                     "--mem")
    return added, notes
