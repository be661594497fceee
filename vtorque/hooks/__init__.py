"""The batch systems' hooks: what runs when a job starts and ends on a node.

    contrib/torque_hooks/  ->  torque.py    (mom_priv prologue/epilogue scripts)
    contrib/pbs_hooks/     ->  openpbs.py   (one PBS hook for the execjob_* events)
    contrib/slurm/         ->  slurm.py     (Prolog/Epilog)

Each module holds only what its scheduler does differently; base.py is the contract they
share, prologue/ and epilogue/ the engines they drive. The shims call
`python -m vtorque.hooks [--config PATH] SCHEDULER EVENT ARGS...` (see __main__.py).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping

# Scheduler -> its hook module (imported alone: this runs for every job of the cluster).
HOOKS = {"torque": "vtorque.hooks.torque", "openpbs": "vtorque.hooks.openpbs",
         "slurm": "vtorque.hooks.slurm"}


def main(scheduler: str, event: str, args: list[str], config_path: str | None,
         environ: Mapping[str, str] | None = None) -> int:
    """Run `scheduler`'s hook for `event`; returns the exit status for the batch system."""
    module = HOOKS.get(scheduler)
    if module is None:
        print(f"vtorque: hooks for {scheduler!r} are not available (known: "
              + ", ".join(HOOKS) + ")", file=sys.stderr)
        return 2
    return importlib.import_module(module).HOOK.main(event, args, config_path, environ)
