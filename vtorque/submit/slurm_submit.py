"""A Slurm submission: sbatch's options, the request in the job's comment, resources
raised, and a wrapper that hands the script to the job shell."""

from __future__ import annotations

import shlex

from vtorque.errors import NodeError, RequestError, UsageError
from vtorque.submit.sbatch_args import SbatchArgs, SbatchScript
from vtorque.submit.sbatch_resources import _effective, adjust_sbatch_resources
from vtorque.submit.sbatch_table import WRAP_DELIMITER
from vtorque.submit.submission import Footprint, Submission


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


def comment_option(cmdline: SbatchArgs, script: SbatchScript, encoded_request: str) -> str:
    """--comment with the request (vtorque:...), the user's own comment kept after it;
    the user's may not start like vsub's, and must be one line."""
    from vtorque.batch.slurm_record import COMMENT_MARKER, comment_for_request
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
    return f"--comment={comment_for_request(encoded_request, user_comment)}"


def build_sbatch_submission(cmdline: SbatchArgs, script: SbatchScript, encoded_request: str,
                            need: Footprint, job_shell: str | None = None) -> Submission:
    """sbatch: the user's options unchanged, then --comment (the request), --mincpus and
    --mem as needed, and the wrapper script that hands the user's script to the job
    shell."""
    if job_shell is None:
        raise NodeError("vsub for Slurm needs batch.job_shell")
    _check_slurm_script(script)
    if script.foreign and not (cmdline.has("ignore-pbs") or
                               any(o.names and "ignore-pbs" in o.names
                                   for _, o in script.options()) or
                               (cmdline.environ or {}).get("SBATCH_IGNORE_PBS")):
        raise UsageError(f"script line {script.foreign[0]}: sbatch would read this #PBS/"
                         "#BSUB directive too; write it as #SBATCH (or pass --ignore-pbs)")
    comment = comment_option(cmdline, script, encoded_request)
    added, notes = adjust_sbatch_resources(cmdline, script, need)
    args = cmdline.words(drop=("wrap",))
    args.append(comment)
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


INTERACTIVE = "--interactive"
# What salloc runs once every node's guests are up (PrologFlags=Alloc: salloc waits for
# the nodes' Prolog): `vtorque ssh JOB [-- COMMAND]` as a job step on the allocation's
# first node, where the job's guests and keys are: the owner's shell in guest rank 0.
SESSION = ('srun=$1 python=$2; shift 2; exec "$srun" --overlap --nodes=1 --ntasks=1 '
           '{pty}"$python" -m vtorque ssh "$SLURM_JOB_ID" "$@"')


def build_salloc_args(cmdline: SbatchArgs, encoded_request: str, need: Footprint,
                      srun: str, python: str, command: list[str], tty: bool
                      ) -> tuple[list[str], list[str]]:
    """(salloc's arguments, notes) for an interactive VM session: the user's options, the
    request in the comment and the resources raised as for sbatch, then the session
    (interactive() has refused a script)."""
    no_script = SbatchScript(None, "")
    comment = comment_option(cmdline, no_script, encoded_request)
    added, notes = adjust_sbatch_resources(cmdline, no_script, need)
    args = [*cmdline.words(), comment, *added]
    session = SESSION.format(pty="--pty " if tty else "")
    return [*args, "/bin/sh", "-c", session, "vsub-session", srun, python,
            *(["--", *command] if command else [])], [f"note: {n}" for n in notes]


def interactive(argv: list[str], config) -> int:
    """vsub --interactive [salloc options] -vm ... [-- COMMAND]: an allocation whose
    guests come up like a batch job's, and a shell (or COMMAND) in guest rank 0 for its
    life; salloc owns the terminal (exec), its exit status is vsub's."""
    import os
    import sys

    from vtorque.submit import common
    from vtorque.submit.sbatch_args import parse_sbatch_args
    words = [w for w in argv if w != INTERACTIVE]
    command: list[str] = []
    if "--" in words:
        at = words.index("--")
        words, command = words[:at], words[at + 1:]
    parsed = parse_sbatch_args(words, environ=os.environ)
    if parsed.script is not None or parsed.values("wrap"):
        raise UsageError(f"vsub {INTERACTIVE} takes no job script: the session is a shell "
                         "in guest rank 0 (a command may follow --)")
    encoded, need = common.check_request(list(parsed.vm_texts), config)
    salloc = common.command_path(config, "salloc")
    srun = common.command_path(config, "srun")
    args, notes = build_salloc_args(parsed, encoded, need, srun, sys.executable, command,
                                    tty=os.isatty(0))
    for note in notes:
        common.say(note)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(salloc, [salloc, *args])
    except OSError as exc:
        raise NodeError(f"cannot run {salloc}: {exc.strerror}") from None
    return 1


def submit(argv: list[str], config, config_error=None) -> int:
    """vsub with sbatch: sbatch's options, the request in the job's comment, the script
    wrapped for the job shell. With --interactive: salloc, and a shell in guest rank 0."""
    import os

    from vtorque.request import JOB_VARIABLE
    from vtorque.submit import common
    from vtorque.submit.sbatch_args import parse_sbatch_args, read_sbatch_script
    from vtorque.submit.sbatch_table import WRAP_HEADER
    if config_error is not None:
        raise config_error
    if INTERACTIVE in argv:
        return interactive(argv, config)
    parsed = parse_sbatch_args(argv, environ=os.environ)
    if parsed.has("help"):
        from vtorque.submit.help import print_help
        return print_help()
    command = common.command_path(config, "sbatch")
    straight = [w for o in parsed.options if {"usage", "version"} & set(o.names)
                for w in o.words]
    if straight:                             # --usage / --version: sbatch's own answer
        return common.run_command([command, *straight], None, os.environ)
    wrap = parsed.values("wrap")
    if wrap:
        if parsed.script is not None:
            raise UsageError("--wrap and a script cannot be given together")
        script = read_sbatch_script(None, WRAP_HEADER + wrap[-1] + "\n")
    else:
        script = read_sbatch_script(parsed.script, common.read_text(parsed.script))
    encoded, need = common.check_request(list(parsed.vm_texts) + script.vm_texts, config)
    submission = build_sbatch_submission(parsed, script, encoded, need,
                                         config.batch.job_shell)
    for note in submission.notes:
        common.say(note)
    env = {k: v for k, v in os.environ.items() if k != JOB_VARIABLE}
    timeout = None if submission.wait else common.SUBMIT_TIMEOUT
    if submission.script_copy is None:
        return common.run_command(submission.argv(command), submission.stdin, env, timeout)
    return common.run_with_copy(submission, command, env, timeout,
                                submission.copy_name or os.path.basename(script.path
                                                                         or "STDIN"))
