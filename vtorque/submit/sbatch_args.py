"""sbatch command lines and job scripts, read as sbatch reads them.

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from vtorque.errors import Unsupported, UsageError
from vtorque.submit.qsub_args import split_directive
from vtorque.submit.qsub_table import BLANK
from vtorque.submit.sbatch_table import (
    NO_ARG,
    REQUIRED,
    SBATCH_LONG,
    SBATCH_PREFIX,
    SBATCH_SHORT_ARG,
    SBATCH_SHORT_FLAG,
    SBATCH_SHORT_OPTIONAL,
    VSUB_PREFIX,
)


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
            parsed = parse_sbatch_args(split_directive(line[len(SBATCH_PREFIX):]),
                                       where=where, directive=True)
            if parsed.vm_texts:
                raise UsageError(f"{where}put VM requests in '{VSUB_PREFIX} -vm ...' lines "
                                 f"(sbatch reads '{SBATCH_PREFIX} -vm' as -v -m)")
            directives.append(SbatchDirective(index + 1, SBATCH_PREFIX, parsed))
            continue
        if line.startswith(VSUB_PREFIX) and line[len(VSUB_PREFIX):][:1] in (" ", "\t"):
            parsed = parse_sbatch_args(split_directive(line[len(VSUB_PREFIX):]),
                                       where=where, directive=True)
            if parsed.options:
                raise UsageError(f"{where}{VSUB_PREFIX} lines take -vm requests only; put "
                                 f"sbatch options in {SBATCH_PREFIX} lines")
            directives.append(SbatchDirective(index + 1, VSUB_PREFIX, parsed))
            continue
        if line.startswith(("#PBS", "#BSUB")):
            foreign.append(index + 1)
        stripped = line.strip(BLANK)
        if not stripped or stripped.startswith("#"):
            continue
        end = index
        break
    return SbatchScript(path, text, tuple(directives), end, tuple(foreign))
