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
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vtorque.errors import Unsupported, UsageError
from vtorque.submit.qsub_table import (
    ARG_LETTERS,
    DEFAULT_PREFIX,
    FLAG_LETTERS,
    NEUTRAL_MARK,
    PASS_THROUGH_LONG,
    VM_OPTION,
    BLANK,
    TRUE_WORDS,
)


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
    """-I and -W interactive=true: refused. qsub -I starts the user's shell on the mother
    superior itself, outside the guests (the job shell never runs), so the session would
    not be in the job's environment; a batch job plus `vtorque ssh` gives that session."""
    interactive = parsed.has("I")
    for arg in parsed.args_of("W"):
        for item in split_list(arg):
            name, _, value = item.partition("=")
            if name.strip().lower() == "interactive" and value.strip().lower() in TRUE_WORDS:
                interactive = True
    if interactive:
        raise Unsupported(f"{where}interactive VM jobs (-I) are not supported with qsub: its "
                          "shell would run on the node, not in the guests; submit a batch "
                          "job (e.g. `sleep 3600`) and log into it with `vtorque ssh JOB`")


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
        stripped = line.lstrip(BLANK)
        if stripped.startswith(prefix):
            rest = stripped[len(prefix):]
            if not rest or rest[0] in BLANK:
                where = f"script line {index + 1}: "
                words = split_directive(rest)
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


def split_directive(rest: str) -> list[str]:
    try:
        return shlex.split(rest, comments=True)
    except ValueError:
        return rest.split()


def _neutralize(line: str, prefix: str, parsed: ParsedArgs) -> str:
    """A directive line without its -vm options (same line count)."""
    if not parsed.groups and not parsed.long_options:
        return NEUTRAL_MARK + line
    indent = line[:len(line) - len(line.lstrip(BLANK))]
    words = [w for g in parsed.groups for w in g.render()] + list(parsed.long_options)
    return indent + prefix + " " + shlex.join(words)
