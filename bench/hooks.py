#!/usr/bin/env python3
"""Benchmark: what vtorque adds to jobs that do not use it, and to submissions.

Measured in one run, interleaved: medians of N rounds (default 15), differences as the
median of each round's own difference; budgets of issue 15:
  - prologue overhead: the installed Torque prologue shim for a job WITHOUT VM requests
    (its fast path: one qstat and a shell pattern match) against an empty shell script
    (Torque's cost of running any prologue), not counting the batch command the prologue
    must call. Budget: <= 10 ms. qstat here is the Python stand-in
    (tests/standins/torque/qstat); its own cost is measured alone and subtracted, since a
    real qstat is a small C program.
  - epilogue overhead: the installed epilogue shim for the same job against the same
    empty script. Budget: <= 10 ms. The shim's fast path (vtorque.markers): no mark of
    the job on this node, no Python. Install arms the marks only where the prologue
    marks its jobs; where it did not, the bench arms them itself (and says so), as the
    first VM job on a node does. Python's own start-up (`python -E -s -c pass`, the
    interpreter the shims run) is measured alone, to tell it from vtorque's imports.
  - the Python path for VM jobs (informational): the epilogue of a marked job with
    nothing left here, and the config load in it, answered by the config cache
    (config/cache.py) against reading and parsing the YAML as before.
  - vsub overhead: `vsub -vm img=testguest script` against the stand-in qsub called with
    the same arguments directly. Budget: <= 75 ms.
Needs the test image pool (scripts/setup). No guests are started.
Usage: bench/hooks.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.standins import install  # noqa: E402

POOL = os.environ.get("VTORQUE_TEST_POOL", "/var/lib/vtorque/test-images")
PROLOGUE_BUDGET = 10.0      # ms over an empty script, the batch command not counted
EPILOGUE_BUDGET = 10.0      # ms over an empty script
VSUB_BUDGET = 75.0          # ms over plain qsub


def verdict(value: float, budget: float) -> str:
    return f"budget <= {budget:g} {'ok' if value <= budget else 'OVER'}"


def timed(argv: list[str], env: dict, stdin: str | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: {argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, choices=range(3, 101))
    args = parser.parse_args()
    load_before = _load()
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-hooks-"))
    try:
        return run(args, work, load_before)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, load_before: str) -> int:
    bin_dir = work / "bin"
    db = install("torque", bin_dir, jobs={"7.bench": {
        "Job_Name": "plain", "Job_Owner": "root@bench", "euser": "root", "egroup": "root",
        "queue": "batch", "job_state": "R", "exec_host": "bench/0",
        "Variable_List": {"PBS_O_WORKDIR": "/tmp"}}})
    os.symlink(REPO / "tests" / "standins" / "recording_qsub", bin_dir / "qsub")
    config = work / "vtorque.yaml"
    config.write_text(yaml.safe_dump({
        "image_pool": POOL, "state_dir": str(work / "state"), "log_file": str(work / "log"),
        "node_name": "bench", "batch": {"system": "torque", "bin_dir": str(bin_dir),
                                        "shared_state_dir": str(work / "shared")}}))
    mom_priv = work / "mom_priv"
    mom_priv.mkdir()
    installed = subprocess.run([str(REPO / "contrib/torque_hooks/install"), "--mom-priv",
                                str(mom_priv), "--python", sys.executable, "--config",
                                str(config), "--job-shell", str(work / "job-shell")],
                               check=True, capture_output=True, text=True)
    fast = next((line.split(": ", 1)[1] for line in installed.stdout.splitlines()
                 if line.startswith("epilogue fast path")), "not reported")
    from vtorque import config as config_mod
    from vtorque import markers
    site = config_mod.load(str(config))
    if fast != "on":
        why = markers.arm(site)
        if why:
            raise SystemExit(f"bench: cannot arm the marks: {why}")
    empty = work / "empty-prologue"
    empty.write_text("#!/bin/sh\nexit 0\n")
    empty.chmod(0o755)
    script = work / "job.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    hook_args = ["7.bench", "root", "root", "plain", "", "batch", ""]
    env = {"PATH": "/usr/bin:/bin"}
    user_env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "VTORQUE_CONFIG": str(config),
                "PYTHONPATH": str(REPO)}
    qsub_args = ["-v", "VTORQUE_VM=img=testguest", str(script)]
    samples: dict[str, list[float]] = {k: [] for k in (
        "empty", "hook", "qstat", "qsub", "vsub", "epilogue", "python", "marked",
        "load_cache", "load_yaml")}
    epilogue_args = ["7.bench", "root", "root", "plain", "0", "", "", "batch", "", "0", ""]
    marked_args = ["8.bench", *epilogue_args[1:]]
    load = [sys.executable, "-E", "-s", "-c", "import sys\nfrom vtorque import config\n"
            "config.load(sys.argv[1])", str(config)]
    parse = [sys.executable, "-E", "-s", "-c", "import sys\nfrom vtorque import config\n"
             "from vtorque.files import read_trusted\n"
             "config.parse(read_trusted(sys.argv[1], '').decode(), sys.argv[1])", str(config)]
    py_env = {**env, "PYTHONPATH": str(REPO)}
    for _ in range(args.rounds):
        samples["empty"].append(timed([str(empty), *hook_args], env))
        samples["hook"].append(timed([str(mom_priv / "prologue"), *hook_args], env))
        samples["epilogue"].append(timed([str(mom_priv / "epilogue"), *epilogue_args], env))
        markers.mark(site, "8.bench")          # a VM job's prologue marked it here
        samples["marked"].append(timed([str(mom_priv / "epilogue"), *marked_args], env))
        samples["load_cache"].append(timed(load, py_env))
        samples["load_yaml"].append(timed(parse, py_env))
        samples["qstat"].append(timed([str(bin_dir / "qstat"), "-f", "-x", "7.bench"], env))
        samples["python"].append(timed([sys.executable, "-E", "-s", "-c", "pass"], env))
        samples["qsub"].append(timed([str(bin_dir / "qsub"), *qsub_args], user_env))
        samples["vsub"].append(timed([sys.executable, "-m", "vtorque.submit.vsub", "-vm",
                                      "img=testguest", str(script)], user_env))
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}

    def paired(minus: str, *plus: str) -> float:
        """Median over the rounds of one round's difference (drift cancels within it)."""
        return statistics.median(samples[minus][i] - sum(samples[k][i] for k in plus)
                                 for i in range(args.rounds)) * 1000
    hook = paired("hook", "empty")
    prologue = paired("hook", "empty", "qstat")
    epilogue = paired("epilogue", "empty")
    rest = paired("marked", "empty", "python")
    vsub = paired("vsub", "qsub")
    print(f"rounds: {args.rounds} (medians, ms); load average {load_before} before, "
          f"{_load()} after")
    print(f"empty script (any prologue/epilogue):  {med['empty']:7.1f}")
    print(f"vtorque prologue, job without VMs:     {med['hook']:7.1f}")
    print(f"  of which the stand-in qstat alone:   {med['qstat']:7.1f}")
    print(f"prologue over the empty script:        {hook:7.1f}   (the stand-in qstat included)")
    print(f"  not counting the batch command:      {prologue:7.1f}   "
          f"{verdict(prologue, PROLOGUE_BUDGET)}")
    print(f"vtorque epilogue, job without VMs:     {med['epilogue']:7.1f}   "
          "(no batch server call)")
    print(f"epilogue over the empty script:        {epilogue:7.1f}   "
          f"{verdict(epilogue, EPILOGUE_BUDGET)}")
    print(f"  the marks: {'armed by install' if fast == 'on' else 'armed by the bench'}"
          f" (install: fast path {fast})")
    if epilogue > EPILOGUE_BUDGET:
        print("  OVER: the shim did not take its fast path (see the line above)")
    print(f"epilogue of a marked job (Python path): {paired('marked', 'empty'):7.1f}   "
          "over the empty script (a VM job's; informational)")
    print(f"  Python's start-up alone:             {med['python']:7.1f}   "
          f"({sys.executable} -E -s -c pass)")
    print(f"  the rest: imports, config, checks:   {rest:7.1f}   (vtorque's own part)")
    print(f"  config load, from the cache:         {med['load_cache']:7.1f}")
    print(f"  config load, reading the YAML:       {med['load_yaml']:7.1f}   "
          f"(the cache saves {paired('load_yaml', 'load_cache'):.1f})")
    print(f"qsub (stand-in) alone:                 {med['qsub']:7.1f}")
    print(f"vsub -vm img=testguest:                {med['vsub']:7.1f}")
    print(f"vsub overhead over qsub:               {vsub:7.1f}   {verdict(vsub, VSUB_BUDGET)}")
    print(f"(stand-in calls recorded: {sum(1 for _ in open(str(db) + '.calls'))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
