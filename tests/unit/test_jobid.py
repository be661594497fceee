"""Unit tests of vtorque.jobid: the one rule for job ids, wherever they come from."""

from __future__ import annotations

import pytest

from vtorque import jobid
from vtorque.errors import JobIdError, NodeError


@pytest.mark.parametrize("job_id", ["12", "123.server", "12[1].server.example.org",
                                    "12[].head", "12_1", "4711@host", "5+1", "9" * 255])
def test_ids_the_batch_systems_print_are_accepted(job_id: str) -> None:
    assert jobid.check(job_id) == job_id


@pytest.mark.parametrize("job_id", [
    "", " ", "../x", "..", "12/..", "a/b", "/abs", "12 13", " 12", "12\n", "12;rm -rf /",
    "$(id)", "`id`", "12|x", "12&", "a>b", "<x>", "12'", '12"', "-12", ".12", "_12",
    "1..b", "9" * 256, "12\x00", "1<x>&\"'", "x*", "é1", "1é", "job1", "a",
    "\u0661\u0662",       # Arabic-Indic digits: str.isdigit() says yes, the rule says no
])
def test_everything_else_is_refused_with_one_bounded_line(job_id: str) -> None:
    with pytest.raises(JobIdError, match="is not a job id") as caught:
        jobid.check(job_id, "torque")
    message = str(caught.value)
    assert message.startswith("torque: ") and "\n" not in message and len(message) < 200


def test_non_strings_are_refused() -> None:
    with pytest.raises(JobIdError):
        jobid.check(12)  # type: ignore[arg-type]


def test_a_bad_id_is_a_node_error() -> None:
    """It came from the batch system (or an admin), never from a user's request."""
    assert issubclass(JobIdError, NodeError)
