"""`vtorque hook <scheduler> <event> ...`: batch-system contracts -> the engines.

Torque (mom_priv scripts, see the project's torque-contract reference):
    prologue           mother superior, root: $1 job id, $2 user, $3 group, ...
    prologue.parallel  sister nodes, root, same arguments
    epilogue           mother superior, root: $1 job id, ..., $10 job exit status
    epilogue.parallel  sister nodes, root
    epilogue.precancel mother superior, as the job owner: nothing to do (no root), the
                       epilogue that always follows tears down
Prologue exit status: 0 runs the job, 1 aborts it (the user's request is at fault), 2
requeues it (this node is at fault). Epilogue exit status is only logged by Torque; a
teardown that cannot complete takes the node offline (`pbsnodes -o`).
"""

from __future__ import annotations

import sys

from vtorque import config as config_mod
from vtorque.errors import ConfigError, VtorqueError

TORQUE_EVENTS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel",
                 "epilogue.precancel")
TORQUE_EXIT = {"run": 0, "abort": 1, "requeue": 2}


def _say(message: str) -> None:
    """Torque appends hook stderr to the job's error file: the user reads this line."""
    if message:
        print(message, file=sys.stderr)


def torque(event: str, args: list[str], config_path: str | None) -> int:
    if event not in TORQUE_EVENTS:
        _say(f"vtorque: unknown Torque hook event {event!r}")
        return 2 if event.startswith("prologue") else 1
    if event == "epilogue.precancel":
        return 0
    prologue = event.startswith("prologue")
    if not args:
        _say(f"vtorque: {event}: no job id argument")
        return 2 if prologue else 1
    job_id = args[0]
    try:
        config = config_mod.load(config_path)
    except ConfigError as exc:
        # The node's configuration is broken: requeue so the job runs elsewhere.
        _say(f"vtorque: {exc}")
        return 2 if prologue else 1
    from vtorque.batch import base
    if prologue:
        try:
            adapter = base.get(config.batch.system, config.batch.bin_dir)
        except VtorqueError as exc:
            _say(f"vtorque: {exc}")
            return 2
        return _torque_prologue(adapter, config, job_id, args, event == "prologue")
    from vtorque.epilogue.teardown import teardown

    def offline(node: str, note: str) -> None:   # the adapter only when it is needed
        base.get(config.batch.system, config.batch.bin_dir).offline_node(node, note)

    ok, message = teardown(job_id, config, mother_superior=event == "epilogue",
                           offline=offline)
    _say(message)
    return 0 if ok else 1


def _torque_prologue(adapter, config, job_id: str, args: list[str],
                     mother_superior: bool) -> int:
    try:
        ctx = adapter.job(job_id)
    except VtorqueError as exc:
        from vtorque.log import node_logger
        node_logger(config).error("job %s: cannot read the job back: %s", job_id, exc)
        _say(f"vtorque: cannot read job {job_id} from the batch server: {exc}")
        return TORQUE_EXIT["requeue"]
    if not ctx.is_vm_job:
        return 0      # every job of the cluster passes here: import nothing more
    from vtorque.prologue.provision import prologue
    outcome = prologue(ctx, config, claimed_user=args[1] if len(args) > 1 else None,
                       mother_superior=mother_superior)
    _say(outcome.message)
    return TORQUE_EXIT[outcome.action]


def main(scheduler: str, event: str, args: list[str], config_path: str | None) -> int:
    if scheduler not in ("torque", "openpbs", "slurm"):
        _say(f"vtorque: hooks for {scheduler!r} are not available")
        return 2
    try:
        # Import only the scheduler's own module: this runs for every job's epilogue.
        if scheduler == "openpbs":
            from vtorque.pbs_hooks import main as handler
        elif scheduler == "slurm":
            from vtorque.slurm_hooks import main as handler
        else:
            handler = torque
        return handler(event, args, config_path)
    except Exception as exc:  # a bug must not leave the job in limbo: requeue, log it
        import traceback
        _say(f"vtorque: internal error in the {event} hook: {exc!r}")
        traceback.print_exc(file=sys.stderr)
        return 2 if event.startswith("prologue") else 1


if __name__ == "__main__":
    # The shims call `python -m vtorque.hooks --config PATH SCHEDULER EVENT ARGS...`:
    # no argparse and no CLI imports on the path every job of the cluster takes.
    _argv = sys.argv[1:]
    _config = None
    if len(_argv) >= 2 and _argv[0] == "--config":
        _config, _argv = _argv[1], _argv[2:]
    if len(_argv) < 2:
        print("usage: python -m vtorque.hooks [--config PATH] SCHEDULER EVENT [ARGS...]",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main(_argv[0], _argv[1], _argv[2:], _config))
