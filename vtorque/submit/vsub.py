"""`vsub`: submit a batch job whose script runs inside per-job virtual machines.

    vsub [qsub options] [-vm key=value[,key=value]]... [script]      (Torque, OpenPBS)
    vsub [sbatch options] [-vm key=value[,key=value]]... [script]    (Slurm)
    vsub --help

Runs on the login node as the user. Every qsub (or sbatch) option is passed through
(qsub_args.py and sbatch_args.py read them, pbs_resources.py and sbatch_resources.py raise
the resources, pbs_submit.py and slurm_submit.py build the submission); the -vm request
is checked against the site's config and image catalog with the same code the root side
runs, so a bad request fails here, with one line, and nothing is submitted. A good one is
submitted with `<batch.bin_dir>/qsub` (or `sbatch`), whose stdout, stderr and exit status
vsub passes on exactly.

The config comes from $VTORQUE_CONFIG or /etc/vtorque/vtorque.yaml. No image is hashed
here (Catalog.describe only); the root side re-validates everything.

Exit status: qsub's (sbatch's) when it ran; 1 when the request, the config or the image is
refused (one line `vsub: <message>` on stderr, nothing run); 2 for a malformed option
list.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from vtorque.errors import UsageError, VtorqueError
    from vtorque.submit.common import say
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(args)
    except UsageError as exc:
        say(str(exc))
        return 2
    except VtorqueError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001  (never a traceback for the user)
        say(f"internal error ({type(exc).__name__}: {exc})")
        return 1


def _main(argv: list[str]) -> int:
    from vtorque import config as config_mod
    from vtorque.errors import VtorqueError
    from vtorque.submit import registry
    if "--help" in argv:
        from vtorque.submit.help import print_help
        return print_help()
    try:
        config = config_mod.load(config_mod.resolve_path())
        submitter = registry.for_config(config)
    except VtorqueError as exc:      # reported once the options are read
        return registry.SUBMITTERS[registry.FALLBACK].submit(argv, None, exc)
    return submitter.submit(argv, config)


if __name__ == "__main__":
    sys.exit(main())
