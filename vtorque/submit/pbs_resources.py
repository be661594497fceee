"""qsub's resources raised so that each allocated node holds the job's guests.


Each allocated node must hold the job's guests plus the host's reserve:

    cores per node  C = vcpus * vms_per_node + host_reserve.cores
    memory per node M = ram * vms_per_node + host_reserve.memory

- `-l nodes=SPEC`: every `+` part keeps its count (or host name) and properties; its ppn is
  raised to C when lower or absent. No nodes (and no select): `nodes=1:ppn=C` is added.
- `-l mem=` is per job in Torque: it is raised to (number of nodes) * M, written in MiB
  (`6144mb`), when lower or absent. A larger value is kept as given.
- `-l select=` (OpenPBS chunks): each chunk's ncpus is raised to C and its mem to M; no
  job-wide mem is added (PBS refuses it next to select). One chunk per host is assumed
  (use `-l place=scatter`).
- Every other resource is left as given. The effective value is found as qsub finds it:
  script directives first, the command line overriding per resource. A resource given on the
  command line is rewritten in place; otherwise one `-l` with the adjusted resources is added
  after the user's options, which overrides the script's directive.
- When a value the user wrote explicitly (ppn, ncpus or mem) is raised, one `vsub: note:`
  line says so on stderr; stdout stays exactly qsub's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vtorque.errors import UsageError
from vtorque.submit.qsub_args import Group, ParsedArgs, split_list
from vtorque.submit.submission import Footprint

_PBS_SIZE = re.compile(r"([0-9]+)([kmgtp]?)([bw]?)", re.IGNORECASE)
_SHIFTS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
_MIB = 1 << 20


def parse_pbs_size(text: str) -> int:
    """A Torque/PBS size (`4gb`, `512mb`, `1024kb`, `100` bytes, `2mw` words) -> bytes."""
    match = _PBS_SIZE.fullmatch(text.strip())
    if not match or (match[2] and not match[3]):
        raise UsageError(f"cannot read the size '{text}' (expected e.g. 4096mb or 4gb)")
    number = int(match[1]) << _SHIFTS[match[2].lower()]
    return number * 8 if match[3].lower() == "w" else number


def format_pbs_mib(mib: int) -> str:
    return f"{mib}mb"


def adjust_nodes(spec: str, need: Footprint, notes: list[str]) -> tuple[str, int]:
    """Raise ppn in every `+` part of a Torque nodes spec; return (spec, node count)."""
    parts = []
    total = 0
    for part in spec.split("+"):
        fields = part.split(":")
        first = fields[0].strip()
        total += int(first) if first.isdigit() else 1
        ppn_at = [i for i, f in enumerate(fields) if f.strip().lower().startswith("ppn=")]
        if ppn_at:
            _raise_count(fields, ppn_at[-1], "ppn", need.cores, f"nodes={spec}", notes)
        else:
            fields.append(f"ppn={need.cores}")
        parts.append(":".join(fields))
    return "+".join(parts), total


def _raise_count(fields: list[str], i: int, key: str, minimum: int, where: str,
                 notes: list[str]) -> None:
    """fields[i] is `key=N`: raise N to `minimum` in place, noting the change."""
    value = fields[i].split("=", 1)[1].strip()
    if not value.isdigit():
        raise UsageError(f"cannot read {key} in -l {where}")
    if int(value) < minimum:
        notes.append(f"{key} {value} -> {minimum}")
        fields[i] = f"{key}={minimum}"


def adjust_select(spec: str, need: Footprint, notes: list[str]) -> str:
    """Raise ncpus and mem in every chunk of a PBS select spec."""
    chunks = []
    for chunk in spec.split("+"):
        fields = chunk.split(":")
        start = 1 if fields[0].strip().isdigit() else 0
        keys = {f.split("=", 1)[0].strip().lower(): i
                for i, f in enumerate(fields) if i >= start and "=" in f}
        if "ncpus" in keys:
            _raise_count(fields, keys["ncpus"], "ncpus", need.cores, f"select={spec}", notes)
        else:
            fields.append(f"ncpus={need.cores}")
        if "mem" in keys:
            i = keys["mem"]
            value = fields[i].split("=", 1)[1].strip()
            if parse_pbs_size(value) < need.memory_mib * _MIB:
                notes.append(f"mem {value} -> {format_pbs_mib(need.memory_mib)}")
                fields[i] = f"mem={format_pbs_mib(need.memory_mib)}"
        else:
            fields.append(f"mem={format_pbs_mib(need.memory_mib)}")
        chunks.append(":".join(fields))
    return "+".join(chunks)


def _resources(arg: str) -> list[tuple[str, str | None]]:
    """-l items as (lowercase name, value or None), in order."""
    out = []
    for item in split_list(arg):
        name, eq, value = item.partition("=")
        out.append((name.strip().lower(), value if eq else None))
    return out


def _rewrite_resource(arg: str, name: str, value: str) -> str:
    """Replace the last item `name=...` of a -l argument, keeping every other item."""
    items = split_list(arg)
    for pos in range(len(items) - 1, -1, -1):
        if items[pos].partition("=")[0].strip().lower() == name:
            items[pos] = f"{name}={value}"
            break
    return ",".join(items)


def adjust_pbs_resources(cmdline: ParsedArgs, script_l: Iterable[str], need: Footprint
                         ) -> tuple[list[Group], list[str], list[str]]:
    """(groups with -l rewritten in place, items of an added -l, notes) for PBS qsub."""
    groups = list(cmdline.groups)
    # Effective resources: script first, then the command line; remember where each came
    # from (group index or None for the script).
    where: dict[str, int | None] = {}
    value: dict[str, str] = {}
    for arg in script_l:
        for name, val in _resources(arg):
            if val is not None:
                where[name], value[name] = None, val
    for index, group in enumerate(groups):
        if group.letter == "l":
            for name, val in _resources(group.arg or ""):
                if val is not None:
                    where[name], value[name] = index, val
    notes: list[str] = []
    updates: dict[str, str] = {}
    if "select" in value:
        new = adjust_select(value["select"], need, notes)
        if new != value["select"]:
            updates["select"] = new
    else:
        if "nodes" in value:
            new, count = adjust_nodes(value["nodes"], need, notes)
            if new != value["nodes"]:
                updates["nodes"] = new
        else:
            updates["nodes"] = f"1:ppn={need.cores}"
            count = 1
        want_mib = count * need.memory_mib
        if "mem" in value:
            have = parse_pbs_size(value["mem"])
            if have < want_mib * _MIB:
                notes.append(f"mem {value['mem']} -> {format_pbs_mib(want_mib)}")
                updates["mem"] = format_pbs_mib(want_mib)
        else:
            updates["mem"] = format_pbs_mib(want_mib)
    added: list[str] = []
    for name, new in updates.items():
        index = where.get(name)
        if index is None:
            added.append(f"{name}={new}")
        else:
            group = groups[index]
            groups[index] = group.with_arg(_rewrite_resource(group.arg or "", name, new))
    return groups, added, notes
