"""OpenPBS / PBS Professional hooks: `python -m vtorque.hooks openpbs EVENT JOBID USER
ms|sister [NODE]`, called by contrib/pbs_hooks/vtorque_hook.py, which pbs_mom runs as
root. It passes the event's job id, the job's owner, whether this MoM is the job's primary
and this MoM's node name (pbs.get_local_nodename(): several MoMs may share a host); the
job itself is always read back from the server (`qstat -f -F json -x`) and re-validated.

    begin     execjob_begin, every MoM of the job at once: bring up this node's guests and
              report (ready or failed) through the hand-off; never rejects (a node at
              fault takes itself offline). The real server starts a sister's
              execjob_prologue only once the primary's has accepted, so waiting for the
              sisters cannot happen in the prologue.
    prologue  execjob_prologue, the primary MoM: wait for every node, then accept or
              reject; sisters: nothing.
    launch    execjob_launch, the primary MoM, the job's first task: for a VM job print
              the job shell (config batch.job_shell) on stdout, one line; the hook makes
              it the job's program. No output: not a VM job, the job runs as usual.
    epilogue  execjob_epilogue: nothing (teardown belongs to end and abort).
    end       execjob_end, every MoM; abort: execjob_abort (the job failed to start): tear
              down the job's guests and files on this node.

Exit status, prologue and launch: 0 accept; 1 the job's request is at fault (the hook
deletes the job: rerunning cannot help); 2 a node is at fault (the hook rejects and PBS
requeues the job; batch.max_requeues bounds it, then 1). begin: 0 (it only reports). Any
of these plus OFFLINE (8) when this node is at fault: the hook takes this MoM's vnodes
offline through the event, which needs no server privileges. end and abort: 0 clean; 1
the teardown is incomplete (the hook takes the node offline). The primary's prologue
prints one `vtorque-note: TEXT` line on stdout, what the job's comment should say (the
image that ran, or why the job did not start); the hook script sets it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vtorque.hooks.base import END, IGNORE, LAUNCH, START, Hook, HookUsage, Invocation, say
from vtorque.outcome import THIS_NODE, Outcome
from vtorque.text import one_line

ROLES = ("ms", "sister")
OFFLINE = 8      # added to the exit status: this node is at fault, take it offline
# The primary's prologue prints the line for the job's record (its comment) on stdout.
NOTE_PREFIX = "vtorque-note: "
NOTE_MAX = 400


class OpenPBSHook(Hook):
    scheduler = "openpbs"
    report_failure = 2           # execjob_begin cannot work: rejected, PBS reruns the job
    events = {"begin": START, "prologue": START, "launch": LAUNCH, "epilogue": IGNORE,
              "end": END, "abort": END}

    def main(self, event: str, args: list[str], config_path: str | None,
             environ: Mapping[str, str] | None = None) -> int:
        event = event.removeprefix("execjob_")
        if event == "prologue" and len(args) >= 3 and args[2] == "sister":
            return 0             # the sister's guests came up in execjob_begin
        return super().main(event, args, config_path, environ)

    def invocation(self, event: str, kind: str, args: list[str],
                   environ: Mapping[str, str]) -> Invocation:
        if len(args) not in (3, 4) or args[2] not in ROLES:
            raise HookUsage(f"expected arguments JOBID USER ms|sister [NODE], got "
                            f"{one_line(repr(args), 120)}")
        begin = event == "begin"
        return Invocation(event, kind, args[0], claimed_user=args[1],
                          mother_superior=args[2] == "ms",
                          node_name=args[3] if len(args) == 4 else None,
                          provision_here=begin, assemble=not begin, decides=not begin)

    def act(self, outcome: Outcome, inv: Invocation, config, adapter, ctx) -> int:
        say(outcome.message)
        if inv.decides and outcome.record:
            # The hook script sets the job's comment from this line (a MoM's root cannot
            # alter jobs at the server; the hook's job object can).
            from vtorque.batch.base import note
            print(NOTE_PREFIX + note(outcome.record, NOTE_MAX), flush=True)
        status = self.exit_codes[outcome.action] if inv.decides else 0
        return status | OFFLINE if outcome.fault == THIS_NODE else status

    def launch(self, inv: Invocation, config, adapter) -> int:
        """Print the job shell for a VM job whose guests are up here; nothing otherwise."""
        if not inv.mother_superior:
            return 0                 # the job's program only ever starts on the primary MoM
        outcome, ctx = self.read_and_check(inv, config, adapter)
        if outcome is not None:
            say(outcome.message)
            return self.exit_codes[outcome.action]
        if not ctx.is_vm_job:
            return 0
        from vtorque.journal import JobPaths
        from vtorque.node import node_name
        shell = config.batch.job_shell
        paths = JobPaths.for_job(inv.job_id, config.state_dir, config.ramdisk_dir)
        problem = None
        if not (os.path.isfile(shell) and os.access(shell, os.X_OK)):
            problem = (f"the job shell {shell} is not installed on this node (config "
                       f"batch.job_shell in {config.path})")
        elif not os.path.isfile(os.path.join(paths.user_dir, "rank0")):
            problem = (f"no guests on this node ({paths.user_dir} has no rank0); the "
                       "prologue did not bring them up")
        if problem is None:
            print(shell)
            return 0
        # This node cannot run the job: offline it and rerun the job elsewhere, within
        # batch.max_requeues (the real server would rerun it at once, over and over).
        name = node_name(config.node_name)
        outcome = Outcome.node_fault(f"vtorque: node {name} cannot launch job "
                                     f"{inv.job_id}: {problem}", name)
        outcome = outcome.within_limit(ctx.run_count, config.batch.max_requeues)
        say(outcome.message)
        return self.exit_codes[outcome.action] | OFFLINE


HOOK = OpenPBSHook()
