#!/usr/bin/env python3
"""Benchmark: what vtorque adds to jobs that do not use it, and to submissions.

Measured in one run, interleaved, medians of N (default 15):
  - hook overhead: the installed Torque prologue shim for a job WITHOUT VM requests (it
    runs Python, loads the config, reads the job back with qstat) against an empty shell
    script (Torque's cost of running any prologue). Budget: <= 50 ms. qstat here is the
    Python stand-in (tests/standins/torque/qstat); its own cost is measured alone and
    reported separately, since a real qstat is a small C program.
  - vsub overhead: `vsub -vm img=testguest script` against the stand-in qsub called with
    the same arguments directly. Budget: <= 150 ms.
Needs the test image pool (scripts/setup). No guests are started.
Usage: bench/hooks.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
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


def timed(argv: list[str], env: dict, stdin: str | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: {argv[0]} failed ({done.returncode}): {done.stderr.strip()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, choices=range(3, 101))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vtorque-bench-hooks-"))
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
    subprocess.run([str(REPO / "contrib/torque_hooks/install"), "--mom-priv", str(mom_priv),
                    "--python", sys.executable, "--config", str(config),
                    "--job-shell", str(work / "job-shell")], check=True, capture_output=True)
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
    samples: dict[str, list[float]] = {k: [] for k in ("empty", "hook", "qstat", "qsub",
                                                        "vsub", "epilogue")}
    epilogue_args = ["7.bench", "root", "root", "plain", "0", "", "", "batch", "", "0", ""]
    for _ in range(args.rounds):
        samples["empty"].append(timed([str(empty), *hook_args], env))
        samples["hook"].append(timed([str(mom_priv / "prologue"), *hook_args], env))
        samples["epilogue"].append(timed([str(mom_priv / "epilogue"), *epilogue_args], env))
        samples["qstat"].append(timed([str(bin_dir / "qstat"), "-f", "-x", "7.bench"], env))
        samples["qsub"].append(timed([str(bin_dir / "qsub"), *qsub_args], user_env))
        samples["vsub"].append(timed([sys.executable, "-m", "vtorque.submit.vsub", "-vm",
                                      "img=testguest", str(script)], user_env))
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    hook = med["hook"] - med["empty"]
    print(f"rounds: {args.rounds} (medians, ms)")
    print(f"empty prologue script:                 {med['empty']:7.1f}")
    print(f"vtorque prologue, job without VMs:     {med['hook']:7.1f}")
    print(f"  of which the stand-in qstat alone:   {med['qstat']:7.1f}")
    print(f"hook overhead over an empty script:    {hook:7.1f}   budget <= 50 "
          f"{'ok' if hook <= 50 else 'OVER'}")
    print(f"  without the stand-in qstat's cost:   {hook - med['qstat']:7.1f}   budget <= 50 "
          f"{'ok' if hook - med['qstat'] <= 50 else 'OVER'}")
    print(f"vtorque epilogue, job without VMs:     {med['epilogue']:7.1f}   (no budget; "
          "Python start-up and config, no batch server call)")
    print(f"qsub (stand-in) alone:                 {med['qsub']:7.1f}")
    print(f"vsub -vm img=testguest:                {med['vsub']:7.1f}")
    over = med["vsub"] - med["qsub"]
    print(f"vsub overhead over qsub:               {over:7.1f}   budget <= 150 "
          f"{'ok' if over <= 150 else 'OVER'}")
    print(f"(stand-in calls recorded: {sum(1 for _ in open(str(db) + '.calls'))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
