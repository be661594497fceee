"""Attacks on parsing: Unicode digits and letters that case-fold onto ASCII, where only
ASCII digits and unit letters are numbers and sizes (the Kelvin sign in a size crashed
Slurm's Prolog, which drains the node: any user could drain every node their jobs
reach); and values echoed back, which must be one bounded line without control
characters (no forged lines in root's log, no flooded error or status files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vtorque import jobid
from vtorque.batch.hostlist import expand_hostlist
from vtorque.batch.openpbs import parse_qstat_json
from vtorque.batch.pbs import parse_exec_host
from vtorque.batch.slurm_record import parse_show_job
from vtorque.errors import JobIdError, NodeError, RecordError, RequestError, VtorqueError
from vtorque.request import parse_request
from vtorque.text import one_line, shown
from vtorque.units import parse_bool, parse_size_mib

DATA = Path(__file__).resolve().parents[1] / "data"
SLURM = (DATA / "slurm-22.05-prolog-show-job-dd.txt").read_text()
OPENPBS = (DATA / "openpbs-23.06-real-qstat-f-F-json-x-running.json").read_text()
KELVIN, LONG_S, DOTLESS_I, DOTTED_I = "\u212a", "\u017f", "\u0131", "\u0130"
ARABIC_1, ARABIC_3, SUPERSCRIPT_2 = "\u0661", "\u0663", "\u00b2"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\ud800-\udfff]")


def clean(message: str, limit: int = 400) -> str:
    assert len(message) <= limit and not _CONTROL.search(message), repr(message)
    return message


# --- numbers and sizes: ASCII only -------------------------------------------------------------

@pytest.mark.parametrize("text", [f"4{KELVIN}", f"4{KELVIN}iB", f"1G{DOTLESS_I}B",
                                  f"1G{DOTTED_I}B", f"{ARABIC_1}G", f"1{SUPERSCRIPT_2}",
                                  "\uff14G", f"2{KELVIN}{DOTLESS_I}b"])
def test_sizes_are_ascii_digits_and_unit_letters_only(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size_mib(text)
    clean(str(info.value))


@pytest.mark.parametrize("text", [f"ye{LONG_S}", f"{DOTTED_I}", f"o{KELVIN}", "\uff59es",
                                  "yes\u2003", "\u00a0no"])
def test_booleans_are_ascii_words_only(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)


@pytest.mark.parametrize("request_text", [
    f"ram=4{KELVIN}", f"disk=1{KELVIN}iB", f"ram=1G{DOTLESS_I}B", f"vcpus={ARABIC_3}",
    f"vms_per_node={SUPERSCRIPT_2}", f"vcpu_pinning=ye{LONG_S}", "vrdma=\uff59es",
])
def test_a_request_with_unicode_numbers_is_one_user_error(cfg, request_text: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(request_text, cfg)
    clean(str(info.value))


def test_batch_numbers_are_ascii_digits_only() -> None:
    for text in (f"n1/{ARABIC_1}-{ARABIC_3}", f"n1/0*{SUPERSCRIPT_2}", f"n1/{ARABIC_1}*2"):
        with pytest.raises(NodeError) as info:
            parse_exec_host(text)
        clean(str(info.value))
    with pytest.raises(NodeError) as info:
        expand_hostlist(f"n[{ARABIC_1}-{ARABIC_3}]")
    clean(str(info.value))
    with pytest.raises(NodeError):
        expand_hostlist("n1\u2003n2")             # not a separator scontrol prints


def test_a_unicode_run_count_is_an_error_not_a_crash() -> None:
    text = re.sub(r'"run_count":[0-9]+', f'"run_count":"{SUPERSCRIPT_2}"', OPENPBS)
    assert text != OPENPBS
    with pytest.raises(NodeError, match="unreadable run_count"):
        parse_qstat_json(text, "16.vm")


@pytest.mark.parametrize("old, new", [
    ("CPU_IDs=0-1", f"CPU_IDs={ARABIC_1}-{ARABIC_3}"),
    ("UserId=root(0)", f"UserId=root({ARABIC_1})"),
    ("NodeList=vm", f"NodeList=v[{ARABIC_1}]"),
])
def test_slurm_numbers_are_ascii_digits_only(old: str, new: str) -> None:
    with pytest.raises(VtorqueError) as info:
        parse_show_job(SLURM.replace(old, new), "1")
    assert isinstance(info.value, (RecordError, NodeError))
    clean(str(info.value), 1000)


@pytest.mark.parametrize("job_id", [f"{ARABIC_1}2", f"1{ARABIC_3}", "1\udcff", "1\n2",
                                    "1" + KELVIN, "\uff11"])
def test_job_ids_follow_one_ascii_rule(job_id: str) -> None:
    with pytest.raises(JobIdError) as info:
        jobid.check(job_id, "slurm")
    clean(str(info.value))


# --- echoed values ---------------------------------------------------------------------------

@pytest.mark.parametrize("request_text", [
    "img=x\n2026-12-02 00:00:00 1 ERROR job 9: forged",
    "img=x\x1b[2J\x1b[31mred",
    "vcpus=1\r\nram=2G\u2028x",
    "unknown" + "\u202e" * 3 + "=1",
    "k" * 100000 + "=1",
    "img=" + "x" * 100000,
    "ram=" + "\x00" * 500,
])
def test_a_request_echoes_one_bounded_clean_line(cfg, request_text: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(request_text, cfg)
    clean(str(info.value))


def test_one_line_removes_what_makes_a_line_read_otherwise() -> None:
    text = "a\nb\rc\x1b[31m\u202egnp.exe\u2066x\u200by\ufeffz\udcff"
    line = one_line(text)
    assert clean(line) == "a b c [31m gnp.exe x y z"
    assert len(shown("x" * 1000)) <= 42


def test_a_failure_reason_in_the_shared_status_is_one_bounded_line(make_config) -> None:
    """The mother superior, the user's `vtorque status` and the job's error file all
    show what a node published; a reason quoting a user's request is one short line."""
    from vtorque.cluster import handoff
    config = make_config()
    reason = "refused: " + "img=x\n2026-12-02 forged line\x1b[2J" * 5000
    handoff.publish(config, "7.h", handoff.NodeStatus("n1", handoff.FAILED, reason))
    status = handoff.read(config, "7.h", "n1")
    assert status.state == handoff.FAILED and status.reason.startswith("refused: img=x ")
    clean(status.reason, 1000)
