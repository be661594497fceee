"""The MPI test programs (C sources in tests/mpi), compiled with the node's mpicc into a
job's working directory: hello (one line per rank), allreduce (checks its sum) and
pingpong (latency and bandwidth between two ranks)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.accounts import JOB_UID

SOURCES = Path(__file__).resolve().parents[1] / "mpi"


def compile_programs(workdir: Path) -> None:
    mpicc = shutil.which("mpicc")
    if mpicc is None:
        pytest.fail("mpicc missing: scripts/setup installs libopenmpi-dev")
    for name in ("hello", "allreduce", "pingpong"):
        subprocess.run([mpicc, "-O2", "-o", str(workdir / name), str(SOURCES / f"{name}.c")],
                       check=True, capture_output=True, text=True, timeout=120)
        os.chown(workdir / name, JOB_UID, JOB_UID)
