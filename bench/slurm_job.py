#!/usr/bin/env python3
"""Benchmark: where the time of a VM job goes, on the real one-machine Slurm cluster.

Submits a 2-guest job with vsub (the demo's setup: scripts/demo.py) and splits the time
from submission to the job script starting in guest rank 0 into scheduler time (until
the Prolog starts provisioning), provisioning and readiness (until the node's guests
answered) and the rest (Prolog end, batch script start, ssh into rank 0); then teardown
(from the script's end until nothing of the job is left). Against the same guest booted
directly from minimal XML (bench/vm_up.py's baseline), measured in the same run.
Needs root and scripts/setup. Usage: bench/slurm_job.py
"""

from __future__ import annotations

import datetime
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


JOB = """#!/bin/sh
#VSUB -vm img=testguest,vms_per_node=2,vcpus=1,ram=256M
#SBATCH -o {out}
echo "start $(date +%s.%N)"
echo "end $(date +%s.%N)"
"""


def log_time(line: str) -> float:
    stamp = line.split(" ", 2)[:2]
    when = datetime.datetime.strptime(" ".join(stamp), "%Y-%m-%d %H:%M:%S,%f")
    return when.timestamp()


def main() -> int:
    demo_mod = load("vtorque_demo", REPO / "scripts" / "demo.py")
    vm_up = load("vtorque_bench_vm_up", REPO / "bench" / "vm_up.py")
    demo = demo_mod.Demo()
    try:
        config = demo.setup()
        work = demo_mod.WORK / "work"
        out = work / "bench.out"
        out.unlink(missing_ok=True)
        demo_mod.JOB = JOB.replace("{out}", str(out))
        submitted_wall = time.time()
        job_id, _, submitted = demo.submit(config)
        info = demo.follow(job_id, config, submitted)
        lines = demo.prolog_lines(job_id)
        prolog_start = log_time(next(ln for ln in lines if "provisioning on" in ln))
        ready = log_time(next(ln for ln in lines if "ready on" in ln))
        text = out.read_text()
        start = float(text.split("start ")[1].split()[0])
        end = float(text.split("end ")[1].split()[0])
        while demo.leftovers(job_id, config):
            time.sleep(0.1)
        gone = time.time()
        from vtorque.images import Catalog
        import libvirt
        conn = libvirt.open("qemu:///system")
        try:
            image = Catalog(config.image_pool).authorize("testguest")
            base = vm_up.baseline_once(conn, image, str(demo_mod.WORK))
        finally:
            conn.close()
    finally:
        demo.stop(False)
    to_script = start - submitted_wall
    print(f"job {job_id} ({info['JobState']}): 2 guests, 1 node, TCG")
    print(f"submission -> job script running in guest rank 0:  {to_script:6.2f} s")
    scheduler = prolog_start - submitted_wall
    print(f"  scheduler (until the Prolog starts provisioning): {scheduler:6.2f} s")
    print(f"  provisioning and readiness (2 guests answered):   {ready - prolog_start:6.2f} s")
    print(f"  Prolog end, batch start, ssh into rank 0:         {start - ready:6.2f} s")
    print(f"one guest booted directly (minimal XML, baseline): {base:6.2f} s   "
          f"ratio provisioning/baseline {(ready - prolog_start) / base:.2f}")
    print(f"teardown (script end -> nothing left):            {gone - end:6.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
