"""OpenPBS / PBS Professional hooks: `vtorque hook openpbs EVENT JOBID USER ms|sister
[NODE]`, called by contrib/pbs_hooks/vtorque_hook.py, which pbs_mom runs as root. It
passes the event's job id, the job's owner, whether this MoM is the job's primary and
this MoM's node name (pbs.get_local_nodename(): several MoMs may share a host); the job
itself is always read back from the server (`qstat -f -F json -x`) and re-validated.

    prologue  execjob_prologue, every MoM of the job before the job starts: bring up this
              node's guests; the primary MoM waits for every node.
    launch    execjob_launch, the primary MoM, the job's first task: for a VM job print
              the job shell (config batch.job_shell) on stdout, one line; the hook makes
              it the job's program. No output: not a VM job, the job runs as usual.
    epilogue  execjob_epilogue: nothing (teardown belongs to end and abort).
    end       execjob_end, every MoM; abort: execjob_abort (the job failed to start): tear
              down the job's guests and files on this node.

Exit status, prologue and launch: 0 accept; 1 the job's request is at fault (the hook
deletes the job: rerunning cannot help); 2 a node is at fault (the hook rejects and PBS
requeues the job; batch.max_requeues bounds it, then 1). end and abort: 0 clean; 1 the
teardown is incomplete (the node has been or is being taken offline).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from vtorque.hooks.base import END, IGNORE, LAUNCH, START, Hook, HookUsage, Invocation, say
from vtorque.text import one_line

ROLES = ("ms", "sister")


class OpenPBSHook(Hook):
    scheduler = "openpbs"
    events = {"prologue": START, "launch": LAUNCH, "epilogue": IGNORE, "end": END,
              "abort": END}

    def main(self, event: str, args: list[str], config_path: str | None,
             environ: Mapping[str, str] | None = None) -> int:
        return super().main(event.removeprefix("execjob_"), args, config_path, environ)

    def invocation(self, event: str, kind: str, args: list[str],
                   environ: Mapping[str, str]) -> Invocation:
        if len(args) not in (3, 4) or args[2] not in ROLES:
            raise HookUsage(f"expected arguments JOBID USER ms|sister [NODE], got "
                            f"{one_line(repr(args), 120)}")
        return Invocation(event, kind, args[0], claimed_user=args[1],
                          mother_superior=args[2] == "ms",
                          node_name=args[3] if len(args) == 4 else None)

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
        shell = config.batch.job_shell
        if not (os.path.isfile(shell) and os.access(shell, os.X_OK)):
            say(f"vtorque: job {inv.job_id}: the job shell {shell} is not installed on this "
                f"node (config batch.job_shell in {config.path})")
            return self.failure_status(LAUNCH)
        paths = JobPaths.for_job(inv.job_id, config.state_dir, config.ramdisk_dir)
        if not os.path.isfile(os.path.join(paths.user_dir, "rank0")):
            say(f"vtorque: job {inv.job_id}: no guests on this node ({paths.user_dir} has "
                "no rank0); the prologue did not bring them up")
            return self.failure_status(LAUNCH)
        print(shell)
        return 0


HOOK = OpenPBSHook()
