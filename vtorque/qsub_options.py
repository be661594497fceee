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
            i = ppn_at[-1]
            value = fields[i].split("=", 1)[1].strip()
            if not value.isdigit():
                raise UsageError(f"cannot read ppn in -l nodes={spec}")
            if int(value) < need.cores:
                notes.append(f"ppn {value} -> {need.cores}")
                fields[i] = f"ppn={need.cores}"
        else:
            fields.append(f"ppn={need.cores}")
        parts.append(":".join(fields))
    return "+".join(parts), total


def adjust_select(spec: str, need: Footprint, notes: list[str]) -> str:
    """Raise ncpus and mem in every chunk of a PBS select spec."""
    chunks = []
    for chunk in spec.split("+"):
        fields = chunk.split(":")
        start = 1 if fields[0].strip().isdigit() else 0
        keys = {f.split("=", 1)[0].strip().lower(): i
                for i, f in enumerate(fields) if i >= start and "=" in f}
        if "ncpus" in keys:
            i = keys["ncpus"]
            value = fields[i].split("=", 1)[1].strip()
            if not value.isdigit():
                raise UsageError(f"cannot read ncpus in -l select={spec}")
            if int(value) < need.cores:
                notes.append(f"ncpus {value} -> {need.cores}")
                fields[i] = f"ncpus={need.cores}"
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


# Batch system -> submission builder. Slurm (sbatch) will translate the qsub-style options
# into sbatch's and register here.
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
