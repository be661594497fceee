"""The ordinary user who owns the end-to-end tests' jobs."""

from __future__ import annotations

import pwd
import subprocess

import pytest

JOB_USER = "vtjob"
JOB_UID = 4242


@pytest.fixture(scope="session")
def job_user():
    """An ordinary user to own test jobs, created here if missing. It stays: test sessions
    may run side by side (and real batch servers keep jobs of it in their history), and a
    session that removed it would pull it from under the others."""
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--uid", str(JOB_UID), "--user-group",
                        "--shell", "/bin/sh", JOB_USER], check=True)
    return JOB_USER
