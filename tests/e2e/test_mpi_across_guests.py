"""Real Open MPI across real guests: 4 guests on 2 simulated Torque nodes run (a) hello,
every rank reporting from a guest, ranks spread over all guests; (b) an allreduce whose
result is checked; (c) a ping-pong between guests of different nodes. The MPI programs are
the C sources in tests/mpi, compiled with mpicc during the test run. One job runs all
three so the 4 guests boot once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.cluster import JOB_UID

# Guest tests run in one serial pytest process (scripts/test), never under xdist.
pytestmark = pytest.mark.guests

SOURCES = Path(__file__).resolve().parents[1] / "mpi"


def compile_programs(workdir: Path) -> None:
    mpicc = shutil.which("mpicc")
    if mpicc is None:
        pytest.fail("mpicc missing: scripts/setup installs libopenmpi-dev")
    for name in ("hello", "allreduce", "pingpong"):
        subprocess.run([mpicc, "-O2", "-o", str(workdir / name), str(SOURCES / f"{name}.c")],
                       check=True, capture_output=True, text=True, timeout=120)
        os.chown(workdir / name, JOB_UID, JOB_UID)


def test_mpi_hello_allreduce_pingpong_across_4_guests(torque_cluster):
    cluster = torque_cluster(2)
    compile_programs(cluster.workdir)
    script = """#!/bin/sh
#PBS -N mpi
#PBS -vm vms_per_node=2,vcpus=1,ram=256M
cd "$PBS_O_WORKDIR"
mpirun -np 4 ./hello
mpirun -np 4 ./allreduce || exit 11
# Rank 0 and rank 1 on guests of different nodes: the first guest of each node.
mpirun -np 2 --host "$(sed -n 1p "$PBS_NODEFILE"),$(sed -n 3p "$PBS_NODEFILE")" \\
    ./pingpong 20 || exit 12
"""
    job = cluster.vsub_job("-l", "nodes=2", "-vm", "img=testguest", script=script)
    run = cluster.harness.run(job)
    assert run.prologue == {"node1": 0, "node2": 0}, run.prologue_output
    assert run.exit_status == 0, run.stdout + run.stderr
    num = job["id"].split(".")[0]
    guests = {f"vt{num}-{rank}" for rank in range(4)}

    hello = re.findall(r"hello rank=(\d) size=4 host=(\S+)", run.stdout)
    assert sorted(int(r) for r, _ in hello) == [0, 1, 2, 3]
    assert {host for _, host in hello} == guests          # every guest holds a rank

    assert "allreduce size=4 sum=10 expected=10 ok=yes" in run.stdout

    [ping] = re.findall(r"pingpong from=(\S+) to=(\S+) latency_us=([\d.]+) "
                        r"bandwidth_MBps=([\d.]+)", run.stdout)
    assert (ping[0], ping[1]) == (f"vt{num}-0", f"vt{num}-2")
    assert float(ping[2]) > 0 and float(ping[3]) > 0
    assert run.epilogue == {"node1": 0, "node2": 0}
    assert cluster.leftovers(job["id"]) == []
