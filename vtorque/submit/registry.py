"""vsub's submitters by batch system: the submit command, the usage line and the module
that reads the options and builds the submission. One table: a new batch system is one
entry here (and its adapter in vtorque/batch/)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Submitter:
    system: str
    command: str            # the batch system's submit command, in batch.bin_dir
    module: str             # has submit(argv, config, config_error) -> exit status
    usage: str

    def submit(self, argv: list[str], config, config_error=None) -> int:
        return importlib.import_module(self.module).submit(argv, config, config_error)


_PBS_USAGE = "usage: vsub [qsub options] [-vm key=value[,key=value]]... [script]"
SUBMITTERS = {
    "torque": Submitter("torque", "qsub", "vtorque.submit.pbs_submit", _PBS_USAGE),
    "openpbs": Submitter("openpbs", "qsub", "vtorque.submit.pbs_submit", _PBS_USAGE),
    "slurm": Submitter("slurm", "sbatch", "vtorque.submit.slurm_submit",
                       "usage: vsub [sbatch options] [-vm key=value[,key=value]]... "
                       "[script]"),
}
# Without a usable config vsub still reads the options (qsub's) to name a bad one first.
FALLBACK = "torque"


def for_config(config) -> Submitter:
    """The submitter of the config's batch.system. For `auto`: Slurm when batch.bin_dir
    holds sbatch and scontrol (checked first, as the adapters' detection does: Slurm's
    optional slurm-torque package puts qsub wrappers next to them, and a job submitted
    through those would carry no request the Slurm hooks can read), else qsub's (Torque
    and OpenPBS submit alike)."""
    import os

    from vtorque.batch.registry import SLURM_MARKERS
    from vtorque.errors import NodeError
    system = config.batch.system
    if system == "auto":
        slurm = all(os.access(os.path.join(config.batch.bin_dir, c), os.X_OK)
                    for c in SLURM_MARKERS)
        system = "slurm" if slurm else FALLBACK
    try:
        return SUBMITTERS[system]
    except KeyError:
        raise NodeError(f"vsub does not support the batch system '{system}' (config key "
                        "batch.system)") from None
