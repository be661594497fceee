"""sbatch's option table as data (sbatch 22.05.8, Debian 12)."""

from __future__ import annotations

REQUIRED, OPTIONAL, NO_ARG = "required", "optional", "none"
# sbatch 22.05.8 (Debian 12): every long option and whether it takes an argument, probed
# with the installed sbatch ("requires an argument" / "doesn't allow an argument"),
# names from sbatch(1) and `sbatch --help` plus the hidden --ntasks-per-tres.
SBATCH_LONG: dict[str, str] = {
    **dict.fromkeys((
        "account", "acctg-freq", "array", "batch", "bb", "bbf", "begin", "chdir",
        "cluster-constraint", "clusters", "comment", "constraint", "container", "core-spec",
        "cores-per-socket", "cpu-freq", "cpus-per-gpu", "cpus-per-task", "deadline",
        "delay-boot", "dependency", "distribution", "error", "exclude", "export",
        "export-file", "extra-node-info", "gid", "gpu-bind", "gpu-freq", "gpus",
        "gpus-per-node", "gpus-per-socket", "gpus-per-task", "gres", "gres-flags", "hint",
        "input", "job-name", "kill-on-invalid-dep", "licenses", "mail-type", "mail-user",
        "mcs-label", "mem", "mem-bind", "mem-per-cpu", "mem-per-gpu", "mincpus", "network",
        "nodefile", "nodelist", "nodes", "ntasks", "ntasks-per-core", "ntasks-per-gpu",
        "ntasks-per-node", "ntasks-per-socket", "ntasks-per-tres", "open-mode", "output",
        "partition", "power", "prefer", "priority", "profile", "qos", "reservation",
        "signal", "sockets-per-node", "switches", "thread-spec", "threads-per-core", "time",
        "time-min", "tmp", "uid", "wait-all-nodes", "wckey", "wrap"), REQUIRED),
    **dict.fromkeys(("exclusive", "get-user-env", "nice", "no-kill", "propagate"),
                    OPTIONAL),
    **dict.fromkeys((
        "contiguous", "help", "hold", "ignore-pbs", "no-requeue", "overcommit",
        "oversubscribe", "parsable", "quiet", "reboot", "requeue", "spread-job",
        "test-only", "usage", "use-min-nodes", "verbose", "version", "wait"), NO_ARG),
}
SBATCH_SHORT_ARG = {
    "a": "array", "A": "account", "b": "begin", "B": "extra-node-info",
    "c": "cpus-per-task", "C": "constraint", "d": "dependency", "D": "chdir", "e": "error",
    "F": "nodefile", "G": "gpus", "i": "input", "J": "job-name", "L": "licenses",
    "m": "distribution", "M": "clusters", "n": "ntasks", "N": "nodes", "o": "output",
    "p": "partition", "q": "qos", "S": "core-spec", "t": "time", "w": "nodelist",
    "x": "exclude"}
SBATCH_SHORT_OPTIONAL = {"k": "no-kill"}
SBATCH_SHORT_FLAG = {"h": "help", "s": "oversubscribe", "v": "verbose", "H": "hold",
                     "O": "overcommit", "Q": "quiet", "V": "version", "W": "wait"}
SBATCH_PREFIX = "#SBATCH"
VSUB_PREFIX = "#VSUB"
WRAP_DELIMITER = "VTORQUE_SCRIPT_EOF"
# sbatch's own text for --wrap (src/sbatch/sbatch.c, _script_wrap).
WRAP_HEADER = "#!/bin/sh\n# This script was created by sbatch --wrap.\n\n"
SBATCH_MEM_ENV = {"SBATCH_MEM_PER_NODE": "mem", "SBATCH_MEM_PER_CPU": "mem-per-cpu",
                  "SBATCH_MEM_PER_GPU": "mem-per-gpu"}
