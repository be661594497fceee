"""qsub command lines and job scripts, read and rebuilt without changing their meaning.

Pure functions only (no files, no environment, no subprocess): `vsub` reads the inputs and
runs the result.

Options
-------
qsub options are read the way getopt reads them, with the option letters of Torque 6.1
(`GETOPT_ARGS` in src/cmds/qsub_functions.c: "a:A:b:c:C:d:D:e:EfF:hi:Ij:J:k:K:l:L:m:M:nN:o:
p:P:q:r:S:t:T:u:v:Vw:W:Xxz-:") joined with OpenPBS's (`-R o|e|oe` takes an argument, `-G` is
a flag). Letters that take an argument take the rest of the word (`-lnodes=2`) or the next
word (`-l nodes=2`); flags may be bundled (`-hz`, `-hNname`). Every option vsub does not own
is passed to qsub unchanged and in order; only the arguments of `-l` and `-v` may be
rewritten in place (see below).

- `-vm TEXT` is vsub's own. It is matched as a whole word before getopt rules apply, so it
  is never read as Torque's `-v m`; a variable called `m` is passed as `-v m`.
- The first word that is not an option is the script; options after it are still read (GNU
  getopt permutes) and the script goes last on qsub's command line. A second such word is
  refused (Torque takes script arguments with `-F`).
- Refused: `--` (Torque would swallow the next word, OpenPBS would take a command instead of
  a script: a VM job needs a script), unknown letters, `-I` and `-W interactive=true`
  (interactive VM jobs are not supported yet). `--version` and `--about` go straight to qsub.

Directives
----------
Only the leading directive block counts, as in qsub: lines whose first non-blank text is the
prefix (`#PBS`; `-C PREFIX` or $PBS_DPREFIX change it, `-C ''` turns directives off) followed
by white space; blank lines, other `#` comments and (a Torque quirk) lines starting with `:`
may come before and among them; the first other line ends the block. Directive words are
split like a shell would (quotes, `# comment` at the end). `-vm` directives are taken out of
the script qsub sees: such a line becomes `# vsub: <the line>` (or, when the line holds other
options too, the prefix and those options), so qsub never reads an option it does not know.
Line numbers do not change.

Resources (Torque/OpenPBS)
--------------------------
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

The request in the job
----------------------
The user's explicit -vm keys travel as the job variable VTORQUE_VM (request.JOB_VARIABLE,
request.encode_pairs: `img=x;vcpus=2`). When the command line has `-v`, it is appended to
the last one (`-v FOO=1,VTORQUE_VM=...`: OpenPBS keeps only the last -v); otherwise one
`-v` is added, carrying the script's `-v` directive values too (a command-line -v replaces
the script's in OpenPBS). A VTORQUE_VM variable from the user is refused.

Slurm (sbatch)
--------------
With batch.system slurm, vsub takes sbatch's own options, read as sbatch 22.05's
getopt_long reads them (SBATCH_LONG, SBATCH_SHORT_*: the option table of the Debian 12
sbatch, probed option by option): long options by their name or any unambiguous prefix
(`--comm=x` is --comment), `--name=value` or `--name value` for a required argument,
`--name=value` only for an optional one; short letters bundle (`-HvN2`). Options end at the
first word that is not one (sbatch's "+" getopt): that word is the script; script
arguments are refused (the job shell runs the script without them), as are `:`
(heterogeneous jobs) and unknown short letters; an unknown long option passes only as
`--name=value`. Every option is passed to sbatch unchanged and in order; vsub adds its own
after them (sbatch takes the last value of an option, and the command line over the
script and SBATCH_* variables).

- `-vm TEXT`, `--vm TEXT` and `--vm=TEXT` are vsub's (`-vm` as a whole word: sbatch would
  read it as -v -m). In the script: `#VSUB -vm key=value` lines in the leading block
  (`#VSUB` at the start of the line, then white space; only -vm requests). `#SBATCH -vm`
  is refused: sbatch would read it as -v -m.
- Directives are read as sbatch reads them: lines starting with `#SBATCH` (column 1) in the
  leading block, which ends at the first line whose first non-blank character is not `#`.
  `#PBS`/`#BSUB` lines there (sbatch translates them) are refused unless --ignore-pbs.
- `--wrap=CMD` becomes the script sbatch would have made of it.
- The request travels in the job's comment (vtorque.batch.slurm: `vtorque:img=x;vcpus=2`,
  then the user's own comment, if any, after one space). A user comment that starts with
  `vtorque:` or holds a line break is refused.
- Resources: `--mincpus` (CPUs on every node, whatever the task layout, which VM jobs do
  not use) is raised to C and `--mem` (memory per node) to M. A user's `--mem-per-cpu` is
  raised to ceil(M / C) instead (sbatch refuses two kinds of memory request); with
  `--mem-per-gpu` the memory is left alone and a note says so. `--mem=0` (the whole node)
  is kept. The effective value is found as sbatch finds it: command line, then SBATCH_MEM_*
  variables, then directives. Raising a value the user gave is noted on stderr.
- sbatch has no -S: vsub submits a wrapper, a copy of the script's leading comment block
  (so sbatch sees every directive) followed by
  `exec <job shell> /dev/stdin <<'VTORQUE_SCRIPT_EOF'`, the script verbatim, and the
  delimiter (made unique when the script holds that line). Quoted, so nothing in the
  script is expanded on the host; the job shell reads the script from the here-document
  and picks the interpreter from the script's own #! line inside the guest.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from vtorque.errors import NodeError, RequestError, UserError
from vtorque.request import JOB_VARIABLE

# Option letters that take an argument / that are flags (Torque 6.1 and OpenPBS together).
ARG_LETTERS = frozenset("aAbcCdDeFijJkKlLmMNopPqrRStTuvwW")
FLAG_LETTERS = frozenset("EfGhInVXxz")
VM_OPTION = "-vm"
PASS_THROUGH_LONG = ("--version", "--about")
DEFAULT_PREFIX = "#PBS"
NEUTRAL_MARK = "# vsub: "

_TRUE = ("true", "t", "yes", "y", "1")
_BLANK = " \t\r\f\v"                    # C isspace() without the newline


class UsageError(UserError):
    """The command line (or a directive) is not a valid qsub/vsub option list."""


class Unsupported(UserError):
    """A valid qsub request that VM jobs do not support (yet)."""


# --- options ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """One option word (or two, when the argument is a separate word), exactly as given.

    `flags` are bundled flag letters before `letter`; `letter` is None for a word of flags
    only. render() gives back the original words; with_arg() changes only the argument.
    """
    flags: str
    letter: str | None = None
    arg: str | None = None
    attached: bool = False

    def render(self) -> list[str]:
        if self.letter is None:
            return ["-" + self.flags]
        if self.attached:
            return ["-" + self.flags + self.letter + (self.arg or "")]
        return ["-" + self.flags + self.letter, self.arg or ""]

    def with_arg(self, arg: str) -> Group:
        return replace(self, arg=arg)

    def has(self, letter: str) -> bool:
        return letter in self.flags or self.letter == letter


@dataclass(frozen=True)
class ParsedArgs:
    """A qsub/vsub command line: pass-through option groups, -vm texts, the script."""
    groups: tuple[Group, ...] = ()
    vm_texts: tuple[str, ...] = ()
    script: str | None = None
    long_options: tuple[str, ...] = ()      # --help, --version, --about

    def args_of(self, letter: str) -> list[str]:
        return [g.arg or "" for g in self.groups if g.letter == letter]

    def has(self, letter: str) -> bool:
        return any(g.has(letter) for g in self.groups)


def parse_args(argv: Sequence[str], *, where: str = "", allow_script: bool = True
               ) -> ParsedArgs:
    """Split qsub-style words into option groups, -vm texts and the script path.

    `where` prefixes messages (e.g. "script line 3: "); directives pass allow_script=False.
    """
    groups: list[Group] = []
    vm_texts: list[str] = []
    long_options: list[str] = []
    script: str | None = None
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == VM_OPTION:
            if i >= len(argv):
                raise UsageError(f"{where}-vm needs key=value[,key=value]")
            vm_texts.append(argv[i])
            i += 1
            continue
        if word == "--":
            raise Unsupported(f"{where}'--' (a command instead of a job script) is not "
                             "supported; put the command in a job script")
        if word.startswith("--"):
            if word in ("--help",) + PASS_THROUGH_LONG:
                long_options.append(word)
                continue
            raise UsageError(f"{where}unknown option {word} (see vsub --help)")
        if not word.startswith("-") or word == "-":
            if not allow_script:
                raise UsageError(f"{where}unexpected word '{word}' in a directive")
            if script is not None:
                raise UsageError(f"{where}unexpected argument '{word}' after the script "
                                 f"'{script}' (Torque passes script arguments with -F)")
            script = word
            continue
        flags = ""
        pos = 1
        while pos < len(word):
            letter = word[pos]
            pos += 1
            if letter in FLAG_LETTERS:
                flags += letter
                continue
            if letter in ARG_LETTERS:
                if pos < len(word):
                    groups.append(Group(flags, letter, word[pos:], attached=True))
                else:
                    if i >= len(argv):
                        raise UsageError(f"{where}option -{letter} needs an argument")
                    groups.append(Group(flags, letter, argv[i]))
                    i += 1
                flags = ""
                break
            raise UsageError(f"{where}unknown qsub option -{letter} (see qsub(1) and "
                             "vsub --help)")
        else:
            groups.append(Group(flags))
    return ParsedArgs(tuple(groups), tuple(vm_texts), script, tuple(long_options))


def refuse_interactive(parsed: ParsedArgs, where: str = "") -> None:
    """-I and -W interactive=true: VM jobs run in batch only (for now)."""
    interactive = parsed.has("I")
    for arg in parsed.args_of("W"):
        for item in split_list(arg):
            name, _, value = item.partition("=")
            if name.strip().lower() == "interactive" and value.strip().lower() in _TRUE:
                interactive = True
    if interactive:
        raise Unsupported(f"{where}interactive VM jobs (-I) are not supported yet; submit a "
                         "batch job script instead")


def split_list(text: str) -> list[str]:
    """Split a qsub list (-l, -v, -W) on commas outside quotes and brackets."""
    items: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for pos, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}" and depth:
            depth -= 1
        elif char == "," and not depth:
            items.append(text[start:pos])
            start = pos + 1
    items.append(text[start:])
    return items


def variable_names(arg: str) -> list[str]:
    """Names in a -v list (`A=1,B` -> [A, B])."""
    return [item.split("=", 1)[0].strip() for item in split_list(arg) if item.strip()]


# --- the job script ----------------------------------------------------------------------

@dataclass(frozen=True)
class Directive:
    line: int                 # 1-based line number in the script
    parsed: ParsedArgs


@dataclass(frozen=True)
class ScriptDirectives:
    directives: tuple[Directive, ...] = ()
    text_for_qsub: str | None = None    # the script with -vm directives neutralized; None:
                                        # unchanged

    @property
    def vm_texts(self) -> list[str]:
        return [t for d in self.directives for t in d.parsed.vm_texts]

    def args_of(self, letter: str) -> list[str]:
        return [a for d in self.directives for a in d.parsed.args_of(letter)]


def directive_prefix(parsed: ParsedArgs, environ: Mapping[str, str]) -> str:
    """-C PREFIX (the last one) wins, then $PBS_DPREFIX, then #PBS; '' means none."""
    prefixes = parsed.args_of("C")
    if prefixes:
        return prefixes[-1]
    return environ.get("PBS_DPREFIX") or DEFAULT_PREFIX


def read_directives(text: str, prefix: str) -> ScriptDirectives:
    """The leading directive block of a job script, parsed; -vm directives neutralized."""
    if not prefix:
        return ScriptDirectives()
    parts = text.split("\n")               # qsub reads lines up to '\n' only
    lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    directives: list[Directive] = []
    changed = False
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r\n")
        stripped = line.lstrip(_BLANK)
        if stripped.startswith(prefix):
            rest = stripped[len(prefix):]
            if not rest or rest[0] in _BLANK:
                where = f"script line {index + 1}: "
                words = _split_directive(rest)
                parsed = parse_args(words, where=where, allow_script=False)
                directives.append(Directive(index + 1, parsed))
                if parsed.vm_texts:
                    lines[index] = _neutralize(line, prefix, parsed) + raw[len(line):]
                    changed = True
                continue
        if not stripped or stripped.startswith("#") or line.startswith(":"):
            continue
        break
    return ScriptDirectives(tuple(directives), "".join(lines) if changed else None)


def _split_directive(rest: str) -> list[str]:
    try:
        return shlex.split(rest, comments=True)
    except ValueError:
        return rest.split()


def _neutralize(line: str, prefix: str, parsed: ParsedArgs) -> str:
    """A directive line without its -vm options (same line count)."""
    if not parsed.groups and not parsed.long_options:
        return NEUTRAL_MARK + line
    indent = line[:len(line) - len(line.lstrip(_BLANK))]
    words = [w for g in parsed.groups for w in g.render()] + list(parsed.long_options)
    return indent + prefix + " " + shlex.join(words)


# --- resources ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Footprint:
    """What one allocated node must offer: the guests plus the host's reserve."""
    cores: int
    memory_mib: int
    vcpus: int = 0
    vms_per_node: int = 0
    reserve_cores: int = 0


def footprint(vcpus: int, ram_mib: int, vms_per_node: int, reserve_cores: int,
              reserve_mib: int) -> Footprint:
    return Footprint(cores=vcpus * vms_per_node + reserve_cores,
                     memory_mib=ram_mib * vms_per_node + reserve_mib,
                     vcpus=vcpus, vms_per_node=vms_per_node, reserve_cores=reserve_cores)


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


# --- the submission ----------------------------------------------------------------------

@dataclass(frozen=True)
class Submission:
    """What to run: `args` then the script (a file or stdin)."""
    command: str                      # the batch command's name: qsub, sbatch
    args: tuple[str, ...]             # options, without the script
    script_path: str | None = None    # the user's script file, passed unchanged
    script_copy: str | None = None    # script text to pass as a file named like the user's
    stdin: str | None = None          # script text to pass on stdin
    notes: tuple[str, ...] = ()       # one-line remarks for stderr
    copy_name: str | None = None      # file name for script_copy (default: the script's)
    wait: bool = False                # the command waits for the job (sbatch --wait)

    def argv(self, command_path: str, copy_path: str | None = None) -> list[str]:
        """The full argv; copy_path is where the caller wrote script_copy."""
        tail: list[str] = []
        if self.script_copy is not None:
            if copy_path is None:
                raise ValueError("script_copy needs a copy_path")
            tail = [copy_path]
        elif self.script_path is not None:
            tail = [self.script_path]
        return [command_path, *self.args, *tail]


@dataclass(frozen=True)
class JobScript:
    path: str | None                  # None: read from stdin
    text: str
    directives: ScriptDirectives


def check_no_job_variable(cmdline: ParsedArgs, script: ScriptDirectives) -> None:
    for arg in cmdline.args_of("v") + script.args_of("v"):
        if JOB_VARIABLE in variable_names(arg):
            raise RequestError(f"the job variable {JOB_VARIABLE} is set by vsub from the -vm "
                               "requests; do not pass it with -v", key=JOB_VARIABLE)


def build_pbs_submission(cmdline: ParsedArgs, script: JobScript, encoded_request: str,
                         need: Footprint, job_shell: str | None = None) -> Submission:
    """Torque / OpenPBS qsub: adjusted resources, the request as a job variable, and the
    vtorque job shell (-S) that runs the script in guest rank 0. A shell the user asked
    for with -S travels as VTORQUE_SHELL and interprets the script inside the guest."""
    groups, added_l, notes = adjust_pbs_resources(cmdline, script.directives.args_of("l"),
                                                  need)
    variable = f"{JOB_VARIABLE}={encoded_request}"
    if job_shell is not None:
        user_shells = script.directives.args_of("S") + [g.arg or "" for g in groups
                                                        if g.letter == "S"]
        if user_shells and user_shells[-1]:
            variable += f",VTORQUE_SHELL={user_shells[-1]}"
        groups = [g for g in groups if g.letter != "S"]
    v_at = [i for i, g in enumerate(groups) if g.letter == "v"]
    added_v: str | None = None
    if v_at:
        group = groups[v_at[-1]]
        arg = group.arg or ""
        groups[v_at[-1]] = group.with_arg(f"{arg},{variable}" if arg.strip() else variable)
    else:
        added_v = ",".join([*script.directives.args_of("v"), variable])
    args = [w for g in groups for w in g.render()]
    if added_l:
        args += ["-l", ",".join(added_l)]
    if added_v is not None:
        args += ["-v", added_v]
    if job_shell is not None:
        args += ["-S", job_shell]
    rewritten = script.directives.text_for_qsub
    note_lines = ()
    if notes:
        note_lines = (f"note: raised {', '.join(notes)} so each node fits "
                      f"{need.vms_per_node} guest(s) of {need.vcpus} vCPU(s) plus the "
                      "host's reserve",)
    if script.path is None:
        return Submission("qsub", tuple(args), stdin=rewritten if rewritten is not None
                          else script.text, notes=note_lines)
    if rewritten is not None:
        return Submission("qsub", tuple(args), script_copy=rewritten, notes=note_lines)
    return Submission("qsub", tuple(args), script_path=script.path, notes=note_lines)


# Batch system -> submission builder (the Slurm one is defined below).
BUILDERS = {
    "torque": build_pbs_submission,
    "openpbs": build_pbs_submission,
}

SUBMIT_COMMANDS = {"torque": "qsub", "openpbs": "qsub", "slurm": "sbatch"}


def build_submission(system: str, cmdline: ParsedArgs, script: JobScript,
                     encoded_request: str, need: Footprint,
                     job_shell: str | None = None) -> Submission:
    try:
        builder = BUILDERS[system]
    except KeyError:
        raise NodeError(f"vsub does not support the batch system '{system}' yet "
                         "(config key batch.system)") from None
    return builder(cmdline, script, encoded_request, need, job_shell)


# --- Slurm (sbatch) ----------------------------------------------------------------------

REQUIRED, OPTIONAL, NO_ARG = "required", "optional", "none"
# sbatch 22.05.8 (Debian 12): every long option and whether it takes an argument, probed
# with the installed sbatch ("requires an argument" / "doesn't allow an argument"),
# names from sbatch(1) and `sbatch --help` plus the hidden --ntasks-per-tres.
SBATCH_LONG: dict[str, str] = {
    **dict.fromkeys((
        "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "chdir",
        "cluster-constraint", "clusters", "comment", "constraint", "container", "core-spec",
        "cores-per-socket", "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline",
        "delay-boot", "dependency", "distribution", "error", "exclude", "export",
        "export-file", "extra-node-info", "gid", "gpu-bind", "gpu-freq", "gpus",
        "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint",
        "input", "job-name", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user",
        "mcs-label", "mem", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network",
        "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu",
        "ntasks-per-node", "ntasks-per-socket", "ntasks-per-tres", "open-mode", "output",
        "partition", "power", "prefer", "priority", "profile", "qos", "reservation",
        "signal", "sockets-per-node", "switches", "thread-spec", "threads-per-core", "time",
        "time-min", "tmp", "uid", "wait-all-nodes", "wckey", "wrap"), REQUIRED),
    **dict.fromkeys(("exclusive", "get-user-env", "nice", "no-kill", "propagate"),
                    OPTIONAL),
    **dict.fromkeys((
        "contiguous", "help", "hold", "ignore-pbs", "no-requeue", "overcommit",
        "oversubscribe", "parsable", "quiet", "reboot", "requeue", "spread-job",
        "test-only", "usage", "use-min-nodes", "verbose", "version", "wait"), NO_ARG),
}
SBATCH_SHORT_ARG = {
    "a": "array", "A": "account", "b": "begin", "B": "extra-node-info",
    "c": "cpus-per-task", "C": "constraint", "d": "dependency", "D": "chdir", "e": "error",
    "F": "nodefile", "G": "gpus", "i": "input", "J": "job-name", "L": "licenses",
    "m": "distribution", "M": "clusters", "n": "ntasks", "N": "nodes", "o": "output",
    "p": "partition", "q": "qos", "S": "core-spec", "t": "time", "w": "nodelist",
    "x": "exclude"}
SBATCH_SHORT_OPTIONAL = {"k": "no-kill"}
SBATCH_SHORT_FLAG = {"h": "help", "s": "oversubscribe", "v": "verbose", "H": "hold",
                     "O": "overcommit", "Q": "quiet", "V": "version", "W": "wait"}
SBATCH_PREFIX = "#SBATCH"
VSUB_PREFIX = "#VSUB"
WRAP_DELIMITER = "VTORQUE_SCRIPT_EOF"
# sbatch's own text for --wrap (src/sbatch/sbatch.c, _script_wrap).
WRAP_HEADER = "#!/bin/sh\n# This script was created by sbatch --wrap.\n\n"
SBATCH_MEM_ENV = {"SBATCH_MEM_PER_NODE": "mem", "SBATCH_MEM_PER_CPU": "mem-per-cpu",
                  "SBATCH_MEM_PER_GPU": "mem-per-gpu"}
_SLURM_SIZE = re.compile(r"([0-9]{1,15})(?:([KMGTkmgt])[Bb]?)?")
_SLURM_SHIFT = {"k": -10, "m": 0, "g": 10, "t": 20}


@dataclass(frozen=True)
class SbatchOption:
    """One option word (or two), exactly as given, and the long names it sets: a bundle
    of short flags sets several; `value` belongs to the last."""
    words: tuple[str, ...]
    names: tuple[str, ...]
    value: str | None = None
    known: bool = True


@dataclass(frozen=True)
class SbatchArgs:
    options: tuple[SbatchOption, ...] = ()
    vm_texts: tuple[str, ...] = ()
    script: str | None = None
    environ: Mapping[str, str] | None = None   # the SBATCH_* variables sbatch will read

    def values(self, name: str) -> list[str]:
        return [o.value or "" for o in self.options
                if o.names and o.names[-1] == name and o.value is not None]

    def has(self, name: str) -> bool:
        return any(name in o.names for o in self.options)

    def words(self, drop: Iterable[str] = ()) -> list[str]:
        dropped = set(drop)
        return [w for o in self.options if not (o.names and o.names[-1] in dropped)
                for w in o.words]


def _resolve_long(name: str, where: str) -> str | None:
    """getopt_long: an exact name, else the one option the text is a prefix of."""
    if name in SBATCH_LONG:
        return name
    matches = [n for n in SBATCH_LONG if name and n.startswith(name)]
    if len(matches) > 1:
        raise UsageError(f"{where}option --{name} is ambiguous (" +
                         ", ".join(f"--{m}" for m in matches[:6]) + ")")
    return matches[0] if matches else None


def parse_sbatch_args(argv: Sequence[str], *, where: str = "", directive: bool = False,
                      environ: Mapping[str, str] | None = None) -> SbatchArgs:
    """Split sbatch-style words into options, -vm texts and the script (see the module
    docstring). Directives (directive=True) take no script; an unknown option there is
    passed over (sbatch judges it)."""
    options: list[SbatchOption] = []
    vm_texts: list[str] = []
    script: str | None = None
    i = 0

    def next_word(what: str) -> str:
        nonlocal i
        if i >= len(argv):
            raise UsageError(f"{where}option {what} needs an argument")
        i += 1
        return argv[i - 1]

    while i < len(argv):
        word = argv[i]
        i += 1
        if word in ("-vm", "--vm"):
            vm_texts.append(next_word(word))
            continue
        if word.startswith("--vm="):
            vm_texts.append(word[len("--vm="):])
            continue
        if word == ":":
            raise Unsupported(f"{where}heterogeneous jobs (':') are not supported for VM "
                              "jobs")
        if word == "--" and not directive:
            if i < len(argv):
                script = argv[i]
                i += 1
            break
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            full = _resolve_long(name, where)
            if full is None:
                if eq or directive:
                    options.append(SbatchOption((word,), (name,), value if eq else None,
                                                known=False))
                    continue
                raise UsageError(f"{where}unknown sbatch option --{name} (an option vsub "
                                 "does not know passes only as --name=value)")
            kind = SBATCH_LONG[full]
            if kind == NO_ARG and eq:
                raise UsageError(f"{where}option --{full} takes no argument")
            if kind == REQUIRED and not eq:
                value = next_word(f"--{full}")
                options.append(SbatchOption((word, value), (full,), value))
                continue
            options.append(SbatchOption((word,), (full,), value if eq else None))
            continue
        if word.startswith("-") and word != "-":
            names: list[str] = []
            value = None
            words: tuple[str, ...] = (word,)
            pos = 1
            while pos < len(word):
                letter = word[pos]
                pos += 1
                if letter in SBATCH_SHORT_FLAG:
                    names.append(SBATCH_SHORT_FLAG[letter])
                    continue
                if letter in SBATCH_SHORT_OPTIONAL:
                    names.append(SBATCH_SHORT_OPTIONAL[letter])
                    value = word[pos:] or None
                    break
                if letter in SBATCH_SHORT_ARG:
                    names.append(SBATCH_SHORT_ARG[letter])
                    if pos < len(word):
                        value = word[pos:]
                    else:
                        value = next_word(f"-{letter}")
                        words = (word, value)
                    break
                raise UsageError(f"{where}unknown sbatch option -{letter} (see sbatch(1) "
                                 "and vsub --help)")
            options.append(SbatchOption(words, tuple(names), value))
            continue
        if directive:
            raise UsageError(f"{where}unexpected word '{word}' in a directive")
        script = word
        break
    if i < len(argv):
        raise Unsupported(f"{where}script arguments ({' '.join(argv[i:][:3])}...) are not "
                          "supported for VM jobs; pass values in the environment or the "
                          "script")
    env = {k: v for k, v in (environ or {}).items() if k.startswith("SBATCH_")}
    return SbatchArgs(tuple(options), tuple(vm_texts), script, env)


@dataclass(frozen=True)
class SbatchDirective:
    line: int
    prefix: str                      # #SBATCH or #VSUB
    parsed: SbatchArgs


@dataclass(frozen=True)
class SbatchScript:
    path: str | None                 # None: standard input (or --wrap)
    text: str
    directives: tuple[SbatchDirective, ...] = ()
    block_end: int = 0               # index of the first line after the leading block
    foreign: tuple[int, ...] = ()    # lines of #PBS / #BSUB directives (sbatch reads them)

    @property
    def vm_texts(self) -> list[str]:
        return [t for d in self.directives for t in d.parsed.vm_texts]

    def options(self) -> list[tuple[int, SbatchOption]]:
        return [(d.line, o) for d in self.directives if d.prefix == SBATCH_PREFIX
                for o in d.parsed.options]


def read_sbatch_script(path: str | None, text: str) -> SbatchScript:
    """The leading block as sbatch reads it: #SBATCH (and our #VSUB) lines up to the first
    line whose first non-blank character is not '#'."""
    lines = text.split("\n")
    directives: list[SbatchDirective] = []
    foreign: list[int] = []
    end = len(lines)
    for index, raw in enumerate(lines):
        line = raw.rstrip("\r")
        where = f"script line {index + 1}: "
        if index == 0 and line.startswith("#!"):
            continue
        if line.startswith(SBATCH_PREFIX):
            parsed = parse_sbatch_args(_split_directive(line[len(SBATCH_PREFIX):]),
                                       where=where, directive=True)
            if parsed.vm_texts:
                raise UsageError(f"{where}put VM requests in '{VSUB_PREFIX} -vm ...' lines "
                                 f"(sbatch reads '{SBATCH_PREFIX} -vm' as -v -m)")
            directives.append(SbatchDirective(index + 1, SBATCH_PREFIX, parsed))
            continue
        if line.startswith(VSUB_PREFIX) and line[len(VSUB_PREFIX):][:1] in (" ", "\t"):
            parsed = parse_sbatch_args(_split_directive(line[len(VSUB_PREFIX):]),
                                       where=where, directive=True)
            if parsed.options:
                raise UsageError(f"{where}{VSUB_PREFIX} lines take -vm requests only; put "
                                 f"sbatch options in {SBATCH_PREFIX} lines")
            directives.append(SbatchDirective(index + 1, VSUB_PREFIX, parsed))
            continue
        if line.startswith(("#PBS", "#BSUB")):
            foreign.append(index + 1)
        stripped = line.strip(_BLANK)
        if not stripped or stripped.startswith("#"):
            continue
        end = index
        break
    return SbatchScript(path, text, tuple(directives), end, tuple(foreign))


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


def unique_delimiter(text: str, base: str = WRAP_DELIMITER) -> str:
    lines = set(text.split("\n"))
    delimiter, n = base, 0
    while delimiter in lines:
        n += 1
        delimiter = f"{base}_{n}"
    return delimiter


def sbatch_wrapper(script: SbatchScript, job_shell: str) -> str:
    """The batch script vsub submits: the user's leading comment block (sbatch reads its
    directives there), then the job shell reading the user's script, verbatim, from a
    quoted here-document."""
    lines = script.text.split("\n")[:script.block_end]
    if lines and lines[0].startswith("#!"):
        lines = lines[1:]
    body = script.text if script.text.endswith("\n") else script.text + "\n"
    delimiter = unique_delimiter(body)
    return ("#!/bin/sh\n" + "".join(line + "\n" for line in lines)
            + "# vsub: the job script below runs in guest rank 0 (vtorque job shell)\n"
            + f"exec {shlex.quote(job_shell)} /dev/stdin <<'{delimiter}'\n"
            + body + delimiter + "\n")


def _check_slurm_script(script: SbatchScript) -> None:
    if not script.text.strip():
        raise UsageError("the job script is empty")
    if "\x00" in script.text:
        raise UsageError("the job script holds NUL bytes; it must be text")
    if not script.text.startswith("#!"):
        raise UsageError("the job script does not start with #! (sbatch wants the first "
                         "line to name an interpreter, e.g. #!/bin/sh)")


def build_sbatch_submission(cmdline: SbatchArgs, script: SbatchScript, encoded_request: str,
                            need: Footprint, job_shell: str | None = None) -> Submission:
    """sbatch: the user's options unchanged, then --comment (the request), --mincpus and
    --mem as needed, and the wrapper script that hands the user's script to the job
    shell."""
    from vtorque.batch.slurm import COMMENT_MARKER, comment_for_request
    if job_shell is None:
        raise NodeError("vsub for Slurm needs batch.job_shell")
    _check_slurm_script(script)
    if script.foreign and not (cmdline.has("ignore-pbs") or
                               any(o.names and "ignore-pbs" in o.names
                                   for _, o in script.options()) or
                               (cmdline.environ or {}).get("SBATCH_IGNORE_PBS")):
        raise UsageError(f"script line {script.foreign[0]}: sbatch would read this #PBS/"
                         "#BSUB directive too; write it as #SBATCH (or pass --ignore-pbs)")
    if any(ch.isspace() for ch in encoded_request):
        raise RequestError("-vm values cannot contain white space")
    user = _effective(cmdline, script, ("comment",))
    user_comment = user[1] if user else None
    if user_comment is not None:
        if user_comment.startswith(COMMENT_MARKER):
            raise RequestError(f"the job comment may not start with {COMMENT_MARKER!r} "
                               f"({user[2]}): vsub writes the VM request there",
                               key="comment")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in user_comment):
            raise UsageError(f"the job comment ({user[2]}) must be one line of text")
    added, notes = adjust_sbatch_resources(cmdline, script, need)
    args = cmdline.words(drop=("wrap",))
    args.append(f"--comment={comment_for_request(encoded_request, user_comment)}")
    args += added
    note_lines: tuple[str, ...] = ()
    raised = [n for n in notes if "->" in n]
    if raised:
        note_lines = (f"note: raised {', '.join(raised)} so each node fits "
                      f"{need.vms_per_node} guest(s) of {need.vcpus} vCPU(s) plus the "
                      "host's reserve",)
    note_lines += tuple(f"note: {n}" for n in notes if "->" not in n)
    wrapper = sbatch_wrapper(script, job_shell)
    wait = cmdline.has("wait") or bool((cmdline.environ or {}).get("SBATCH_WAIT"))
    wrapped = bool(cmdline.values("wrap"))
    if script.path is None and not wrapped:
        return Submission("sbatch", tuple(args), stdin=wrapper, notes=note_lines,
                          wait=wait)
    return Submission("sbatch", tuple(args), script_copy=wrapper, notes=note_lines,
                      copy_name="wrap" if wrapped else None, wait=wait)


BUILDERS["slurm"] = build_sbatch_submission
