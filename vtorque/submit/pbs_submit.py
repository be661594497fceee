"""A Torque / OpenPBS submission: qsub's options with resources raised, the request as a
job variable, and the job shell.

The request in the job
----------------------
The user's explicit -vm keys travel as the job variable VTORQUE_VM (request.JOB_VARIABLE,
request.encode_pairs: `img=x;vcpus=2`). When the command line has `-v`, it is appended to
the last one (`-v FOO=1,VTORQUE_VM=...`: OpenPBS keeps only the last -v); otherwise one
`-v` is added, carrying the script's `-v` directive values too (a command-line -v replaces
the script's in OpenPBS). A VTORQUE_VM variable from the user is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtorque.errors import RequestError
from vtorque.request import JOB_VARIABLE
from vtorque.submit.pbs_resources import adjust_pbs_resources
from vtorque.submit.qsub_args import ParsedArgs, ScriptDirectives, variable_names
from vtorque.submit.submission import Footprint, Submission


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


def submit(argv: list[str], config, config_error=None) -> int:
    """vsub with qsub (Torque, OpenPBS): the options read, the request checked, qsub run.
    A config that did not load is reported after the options are read (a malformed
    command line is named first)."""
    import os

    from vtorque.submit import common
    from vtorque.submit.qsub_args import (
        directive_prefix,
        parse_args,
        read_directives,
        refuse_interactive,
    )
    parsed = parse_args(argv)
    refuse_interactive(parsed)
    if config_error is not None:
        raise config_error
    command = common.command_path(config, "qsub")
    if parsed.long_options:                     # --version / --about: qsub's own answer
        return common.run_command([command, *parsed.long_options], None, os.environ)
    text = common.read_text(parsed.script)
    script = JobScript(parsed.script, text,
                       read_directives(text, directive_prefix(parsed, os.environ)))
    for directive in script.directives.directives:
        refuse_interactive(directive.parsed, f"script line {directive.line}: ")
    check_no_job_variable(parsed, script.directives)
    encoded, need = common.check_request(
        list(parsed.vm_texts) + script.directives.vm_texts, config)
    submission = build_pbs_submission(parsed, script, encoded, need, config.batch.job_shell)
    for note in submission.notes:
        common.say(note)
    env = {k: v for k, v in os.environ.items() if k != JOB_VARIABLE}
    if submission.script_copy is None:
        return common.run_command(submission.argv(command), submission.stdin, env)
    return common.run_with_copy(submission, command, env, common.SUBMIT_TIMEOUT,
                                os.path.basename(script.path or "STDIN"))
