"""Attacks on per-job SSH identities: a job id that comes back (Slurm's ids wrap or its
database is reset, a reinstalled Torque server counts from 0, two clusters share a
secret) must not give the new job the keys of the old one, whose owner kept the private
key from their job's files. Keys are bound to the id, the owner's uid and the server's
creation time of the job, which every node reads from the same record."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest

from vtorque.batch.openpbs import OpenPBS, parse_qstat_json
from vtorque.batch.slurm import Slurm
from vtorque.batch.slurm_record import parse_show_job
from vtorque.batch.torque import Torque, parse_qstat_xml
from vtorque.errors import NodeError
from vtorque.mpi import sshkeys

DATA = Path(__file__).resolve().parents[1] / "data"
SECRET = b"s" * 32


def keys(scope: sshkeys.KeyScope) -> set[str]:
    return {sshkeys.user_key(SECRET, scope).public,
            *(sshkeys.host_key(SECRET, scope, rank).public for rank in range(3))}


def test_a_reused_job_id_of_another_owner_gets_other_keys() -> None:
    alices = sshkeys.KeyScope("12", uid=1001, created=1_700_000_000)
    bobs = sshkeys.KeyScope("12", uid=1002, created=1_800_000_000)
    assert keys(alices).isdisjoint(keys(bobs))


def test_a_reused_job_id_of_the_same_owner_gets_other_keys() -> None:
    """A database reset: the same user, the same id, another job."""
    first = sshkeys.KeyScope("12", uid=1001, created=1_700_000_000)
    again = sshkeys.KeyScope("12", uid=1001, created=1_700_000_001)
    assert keys(first).isdisjoint(keys(again))


def test_one_job_has_the_same_keys_on_every_node() -> None:
    scope = sshkeys.KeyScope("12.head", uid=1001, created=1_700_000_000)
    again = sshkeys.KeyScope("12.head", uid=1001, created=1_700_000_000)
    assert keys(scope) == keys(again) and len(keys(scope)) == 4


def test_no_scope_without_the_servers_creation_time() -> None:
    with pytest.raises(NodeError, match="no creation time for job 12"):
        sshkeys.scope_for("12", "root", None)
    with pytest.raises(NodeError, match="is not a job id"):
        sshkeys.scope_for("../12", "root", 1)


def test_the_scope_takes_the_servers_uid_else_the_nodes_account() -> None:
    assert sshkeys.scope_for("12", "root", 5).uid == 0
    assert sshkeys.scope_for("12", "root", 5, uid=1001).uid == 1001
    with pytest.raises(NodeError, match="no account on this node"):
        sshkeys.scope_for("12", "no-such-user-here", 5)


def test_each_scheduler_reports_the_owner_and_the_creation_time() -> None:
    torque = parse_qstat_xml((DATA / "torque-6.1-real-qstat-fx-running.xml").read_text(),
                             "0.vm")
    assert torque.created == 1796170623
    pbs = parse_qstat_json(
        (DATA / "openpbs-23.06-real-qstat-f-F-json-x-running.json").read_text(), "16.vm")
    assert pbs.created == calendar.timegm(time.strptime("Tue Dec 1 23:41:10 2026",
                                                        "%a %b %d %H:%M:%S %Y"))
    slurm = parse_show_job((DATA / "slurm-22.05-prolog-show-job-dd.txt").read_text(), "1").ctx
    assert (slurm.uid, slurm.created) == (0, calendar.timegm((2026, 11, 24, 3, 48, 56)))


@pytest.mark.parametrize("adapter", [Torque("/usr/bin"), OpenPBS("/usr/bin"),
                                     Slurm("/usr/bin", environ={})])
def test_every_node_reads_the_creation_time_in_the_same_time_zone(adapter) -> None:
    """PBS and Slurm print times in the local zone: with TZ=UTC every node reads one
    creation time, whatever its own zone, and derives the same keys."""
    assert adapter.query_env()["TZ"] == "UTC"
