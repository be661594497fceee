"""Torque adapter: qstat -f -x parsing on real samples and hand-made variants, then the
adapter end to end through the stand-in qstat/pbsnodes (tests/standins/torque)."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.standins import calls, install, read_db
from vtorque import proc
from vtorque.batch.base import (
    NOTE_MAX,
    NOTE_PREFIX,
    UnknownJobError,
    node_note,
    pick_job,
)
from vtorque.batch.pbs import parse_exec_host, parse_variable_list
from vtorque.batch.torque import Torque, parse_qstat_xml
from vtorque.errors import CommandError, NodeError

DATA = Path(__file__).resolve().parent.parent / "data"
SAMPLE = (DATA / "torque-qstat-f-x.xml").read_text()
SAMPLE_SERVER = "ip-10-0-0-196.eu-west-1.compute.internal"
DECL = '<?xml version="1.0"?>\n'


def job_xml(job_id: str = "12[1].head.cluster", *, decl: str = DECL,
            variables: str = ("PBS_O_HOME=/home/alice,PBS_O_WORKDIR=/home/alice/run,"
                              "VTORQUE_VM=img=x;vcpus=2,PBS_O_PATH=/usr/bin\\,/bin,"
                              "PBS_O_HOST=login1"),
            extra: str = "", exec_host: str = "n1/0-1+n2/0-1") -> str:
    """One job as Torque 6 prints it (one line); Torque 4/5 with decl=''."""
    return (f"{decl}<Data><Job><Job_Id>{job_id}</Job_Id><Job_Name>sim &amp; co</Job_Name>"
            "<Job_Owner>alice@login1.cluster</Job_Owner><job_state>R</job_state>"
            "<queue>batch</queue><exec_host>" + exec_host + "</exec_host>"
            "<Resource_List><nodes>2:ppn=2</nodes><walltime>01:00:00</walltime>"
            f"</Resource_List><Variable_List>{variables}</Variable_List><euser>alice</euser>"
            f"<egroup>hpc</egroup><start_count>2</start_count>{extra}"
            "<init_work_dir>/home/alice/init</init_work_dir></Job></Data>\n")


# --- the real sample ---------------------------------------------------------------------------

def test_sample_job_150_runs_on_two_nodes() -> None:
    ctx = parse_qstat_xml(SAMPLE, "150")
    assert ctx.scheduler == "torque"
    assert ctx.job_id == "150"          # the caller's id, not the server's spelling
    assert ctx.nodes == ("ip-10-0-1-95", "ip-10-0-1-168")
    assert ctx.slots == (1, 1)
    assert (ctx.user, ctx.group, ctx.job_name, ctx.queue) == ("centos", "centos", "STDIN",
                                                              "batch")
    assert ctx.workdir == "/home/centos"
    assert ctx.run_count == 1           # no run_count element: start_count
    assert ctx.state == "R"
    assert ctx.vm_request is None and not ctx.is_vm_job
    assert ctx.variables["PBS_O_SERVER"] == "ip-10-0-0-196"
    assert ctx.variables["PBS_O_PATH"].endswith(":/home/centos/bin")


@pytest.mark.parametrize("job_id, nodes, slots, name", [
    ("149", ("ip-10-0-1-168",), (2,), "STDIN"),
    ("151", ("ip-10-0-1-168",), (1,), "STDIN"),
    ("152", (), (), "STDIN"),                       # queued: no exec_host
    ("166[1]", (), (), "STDIN-1"),
    (f"166[3].{SAMPLE_SERVER}", (), (), "STDIN-3"),
])
def test_sample_every_job(job_id: str, nodes: tuple, slots: tuple, name: str) -> None:
    ctx = parse_qstat_xml(SAMPLE, job_id)
    assert (ctx.nodes, ctx.slots, ctx.job_name) == (nodes, slots, name)
    assert ctx.job_id == job_id


def test_sample_array_subjob_keeps_its_variables() -> None:
    ctx = parse_qstat_xml(SAMPLE, "166[2]")
    assert ctx.variables["PBS_ARRAYID"] == "2"
    assert ctx.run_count == 0           # never started: neither run_count nor start_count


@pytest.mark.parametrize("spelling", ["150", "150.ip-10-0-0-196", f"150.{SAMPLE_SERVER}",
                                      "150.other-name-of-the-server"])
def test_sample_id_spellings_find_the_same_job(spelling: str) -> None:
    ctx = parse_qstat_xml(SAMPLE, spelling)
    assert ctx.nodes == ("ip-10-0-1-95", "ip-10-0-1-168")


def test_sample_missing_job_is_a_node_error() -> None:
    with pytest.raises(NodeError, match="does not hold job 153"):
        parse_qstat_xml(SAMPLE, "153")


def test_torque4_text_output_is_refused() -> None:
    with pytest.raises(NodeError, match="cannot parse"):
        parse_qstat_xml((DATA / "torque4-qstat-f.txt").read_text(), "20034159")


# --- hand-made variants ------------------------------------------------------------------------

@pytest.mark.parametrize("decl", [DECL, ""], ids=["torque6", "torque4-5"])
def test_xml_with_and_without_declaration(decl: str) -> None:
    ctx = parse_qstat_xml(job_xml(decl=decl), "12[1].head.cluster")
    assert ctx.job_id == "12[1].head.cluster"
    assert ctx.vm_request == "img=x;vcpus=2" and ctx.is_vm_job
    assert ctx.variables["PBS_O_PATH"] == "/usr/bin,/bin"      # escaped comma
    assert ctx.variables["PBS_O_HOST"] == "login1"
    assert ctx.workdir == "/home/alice/run"
    assert (ctx.user, ctx.group) == ("alice", "hpc")
    assert ctx.job_name == "sim & co"
    assert ctx.nodes == ("n1", "n2") and ctx.slots == (2, 2)
    assert ctx.run_count == 2


def test_array_id_without_server_name() -> None:
    assert parse_qstat_xml(job_xml(), "12[1]").nodes == ("n1", "n2")


def test_owner_falls_back_to_job_owner_and_group_to_none() -> None:
    text = job_xml().replace("<euser>alice</euser>", "").replace("<egroup>hpc</egroup>", "")
    ctx = parse_qstat_xml(text, "12[1]")
    assert (ctx.user, ctx.group) == ("alice", None)


def test_workdir_falls_back_to_init_work_dir() -> None:
    ctx = parse_qstat_xml(job_xml(variables="PBS_O_HOME=/home/alice"), "12[1]")
    assert ctx.workdir == "/home/alice/init"
    assert ctx.vm_request is None


def test_run_count_wins_over_start_count() -> None:
    ctx = parse_qstat_xml(job_xml(extra="<run_count>4</run_count>"), "12[1]")
    assert ctx.run_count == 4


def test_unreadable_run_count_is_a_node_error() -> None:
    with pytest.raises(NodeError, match="run_count"):
        parse_qstat_xml(job_xml(extra="<run_count>many</run_count>"), "12[1]")


def test_pretty_printed_variable_list_is_stripped() -> None:
    text = job_xml(variables="\n            PBS_O_WORKDIR=/w,VTORQUE_VM=vcpus=4\n        ")
    ctx = parse_qstat_xml(text, "12[1]")
    assert ctx.vm_request == "vcpus=4" and ctx.workdir == "/w"


def test_control_characters_in_values_do_not_break_parsing() -> None:
    text = job_xml().replace("sim &amp; co", "sim\x01\x1bco")
    assert parse_qstat_xml(text, "12[1]").job_name == "simco"


@pytest.mark.parametrize("text, match", [
    ("<Data><Job><Job_Id>1.h</Job_Id>", "cannot parse"),
    ("", "cannot parse"),
    ("qstat: cannot connect to server", "cannot parse"),
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><Data/>', "DTD"),
    ("<Nodes><Job><Job_Id>1.h</Job_Id></Job></Nodes>", "root element"),
    ("<Data></Data>", "does not hold job"),
])
def test_bad_output_is_a_node_error(text: str, match: str) -> None:
    with pytest.raises(NodeError, match=match):
        parse_qstat_xml(text, "1")


@pytest.mark.parametrize("owner_xml", [
    "<Job_Owner></Job_Owner>",
    "<Job_Owner>-rf@h</Job_Owner>",
    "<Job_Owner>a b@h</Job_Owner>",
])
def test_unusable_owner_is_a_node_error(owner_xml: str) -> None:
    text = job_xml().replace("<euser>alice</euser>", "").replace(
        "<Job_Owner>alice@login1.cluster</Job_Owner>", owner_xml)
    with pytest.raises(NodeError, match="owner"):
        parse_qstat_xml(text, "12[1]")


# --- exec_host and Variable_List ---------------------------------------------------------------

@pytest.mark.parametrize("text, nodes, slots", [
    ("host1/0-1+host2/2+host1/3", ("host1", "host2"), (3, 1)),
    ("ip-10-0-1-95/0+ip-10-0-1-168/2", ("ip-10-0-1-95", "ip-10-0-1-168"), (1, 1)),
    ("n1/0-3,5", ("n1",), (5,)),
    ("r25i27n01/0-35+r25i27n03/0-35", ("r25i27n01", "r25i27n03"), (36, 36)),
    ("n2/0+n1/0+n2/1+n2/2", ("n2", "n1"), (3, 1)),
    ("n1.cluster.org/7", ("n1.cluster.org",), (1,)),
    ("n1", ("n1",), (1,)),
    ("charon24/0*2+charon21/0*2", ("charon24", "charon21"), (2, 2)),     # PBS form
    ("", (), ()),
])
def test_parse_exec_host(text: str, nodes: tuple, slots: tuple) -> None:
    assert parse_exec_host(text) == (nodes, slots)


@pytest.mark.parametrize("text", ["n1/3-1", "n1/x", "-n1/0", "n1/0+", "a b/0", "n1/0-",
                                  "n1/0*x", "n1:15002/0"])
def test_parse_exec_host_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(NodeError):
        parse_exec_host(text)


@pytest.mark.parametrize("text, expected", [
    ("A=1,B=2", {"A": "1", "B": "2"}),
    ("VTORQUE_VM=img=x;vcpus=2", {"VTORQUE_VM": "img=x;vcpus=2"}),
    ("P=/a\\,/b,Q=x", {"P": "/a,/b", "Q": "x"}),
    ("P=C:\\dir,Q=x", {"P": "C:\\dir", "Q": "x"}),            # other backslashes stay
    ("P=a,b,Q=x", {"P": "a,b", "Q": "x"}),                   # unescaped comma: continuation
    ("A=1,A=2", {"A": "2"}),
    ("E=,F=1", {"E": "", "F": "1"}),
    ("\n   A=1\n   ", {"A": "1"}),
    ("", {}),
])
def test_parse_variable_list(text: str, expected: dict) -> None:
    assert parse_variable_list(text) == expected


_NAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True)
# Any printable text without backslashes (a value ending in '\\' before the separator is
# ambiguous in Torque's own format) and without trailing blanks (the list is stripped).
_VALUES = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\"),
                  max_size=30).filter(lambda v: v == v.rstrip())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_NAMES, _VALUES, min_size=1, max_size=8))
def test_variable_list_round_trip(variables: dict) -> None:
    text = ",".join(f"{k}={v.replace(',', chr(92) + ',')}" for k, v in variables.items())
    assert parse_variable_list(text) == variables


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n1", "n2", "node-3.cluster", "ip-10-0-1-95"]),
                          st.lists(st.tuples(st.integers(0, 63), st.integers(0, 8)),
                                   min_size=1, max_size=3)),
                min_size=1, max_size=6))
def test_exec_host_property(parts: list) -> None:
    text = "+".join(host + "/" + ",".join(f"{lo}-{lo + n}" if n else str(lo)
                                          for lo, n in ranges)
                    for host, ranges in parts)
    expected: dict[str, int] = {}
    for host, ranges in parts:
        expected[host] = expected.get(host, 0) + sum(n + 1 for _, n in ranges)
    assert parse_exec_host(text) == (tuple(expected), tuple(expected.values()))


# --- shared helpers ----------------------------------------------------------------------------

def test_node_note_is_one_short_clean_line() -> None:
    note = node_note("guest\nfailed\x1b[31m to\tboot " + "x" * 500)
    assert note.startswith(NOTE_PREFIX + "guest failed [31m to boot x")
    assert len(note) == NOTE_MAX and note.endswith("...")
    assert all(ch.isprintable() for ch in note)
    assert node_note("") == NOTE_PREFIX + "node taken offline"
    assert node_note("short") == NOTE_PREFIX + "short"


@pytest.mark.parametrize("reported, wanted, found", [
    (["7.a.b"], "7.a.b", "7.a.b"),
    (["7.a.b"], "7", "7.a.b"),
    (["7.a.b"], "7.a", "7.a.b"),
    (["7.a.b"], "7.other", "7.a.b"),
    (["7.a", "77.a"], "7", "7.a"),
    (["12[1].a", "12[2].a"], "12[2]", "12[2].a"),
    (["12[1].a", "12[2].a"], "12", None),
    (["8.a"], "7", None),
])
def test_pick_job(reported: list, wanted: str, found: str | None) -> None:
    assert pick_job(reported, wanted) == found


# --- end to end through the stand-ins ----------------------------------------------------------

STANDIN_JOB = {
    "Job_Name": "vmjob",
    "Job_Owner": "alice@login1",
    "job_state": "R",
    "queue": "batch",
    "exec_host": "n1/0-1+n2/0-1",
    "Resource_List": {"nodes": "2:ppn=2", "walltime": "01:00:00"},
    "Variable_List": {"PBS_O_WORKDIR": "/home/alice/run", "VTORQUE_VM": "img=x;vcpus=2",
                      "PBS_O_PATH": "/usr/bin,/bin"},
    "euser": "alice",
    "egroup": "hpc",
    "start_count": "1",
}


@pytest.fixture
def torque_bin(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    db = install("torque", bin_dir, jobs={"7.head": STANDIN_JOB, "12[1].head": STANDIN_JOB})
    return bin_dir, db


@pytest.mark.parametrize("job_id", ["7", "7.head", "12[1]", "12[1].head"])
def test_job_through_standin(torque_bin: tuple[Path, Path], job_id: str) -> None:
    bin_dir, db = torque_bin
    ctx = Torque(str(bin_dir), timeout=20).job(job_id)
    assert ctx.job_id == job_id
    assert ctx.nodes == ("n1", "n2") and ctx.slots == (2, 2)
    assert ctx.vm_request == "img=x;vcpus=2"
    assert ctx.variables["PBS_O_PATH"] == "/usr/bin,/bin"
    assert (ctx.user, ctx.group, ctx.workdir, ctx.run_count) == ("alice", "hpc",
                                                                 "/home/alice/run", 1)
    assert calls(db) == [{"prog": "qstat", "argv": ["qstat", "-f", "-x", job_id]}]


def test_job_through_torque4_standin(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    db = install("torque", bin_dir, jobs={"7.head": STANDIN_JOB}, torque_version="4.2.10")
    out = proc.run([str(bin_dir / "qstat"), "-f", "-x", "7"], timeout=20).stdout
    assert out.startswith("<Data><Job>")
    assert Torque(str(bin_dir)).job("7").nodes == ("n1", "n2")
    assert len(calls(db)) == 2


def test_unknown_job_through_standin(torque_bin: tuple[Path, Path]) -> None:
    bin_dir, _ = torque_bin
    with pytest.raises(UnknownJobError, match="job 99.head is unknown") as info:
        Torque(str(bin_dir)).job("99.head")
    assert isinstance(info.value, NodeError) and info.value.job_id == "99.head"
    assert "Unknown Job Id Error 99.head" in str(info.value)


def test_other_qstat_failure_is_a_command_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("torque", bin_dir, jobs={"7.head": STANDIN_JOB}, fail={"qstat": {
        "exit": 111, "stderr": "Communication failure.\nqstat: cannot connect to server "
                               "head (errno=111) Connection refused\n"}})
    with pytest.raises(CommandError, match="cannot connect to server") as info:
        Torque(str(bin_dir)).job("7")
    assert not isinstance(info.value, UnknownJobError)
    assert info.value.returncode == 111


def test_hanging_qstat_times_out(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("torque", bin_dir, jobs={"7.head": STANDIN_JOB}, delay={"qstat": 60})
    started = time.monotonic()
    with pytest.raises(CommandError, match="timed out") as info:
        Torque(str(bin_dir), timeout=1).job("7")
    assert info.value.timed_out and time.monotonic() - started < 30


@pytest.mark.parametrize("job_id", ["-x", "7 8", "", "7;rm", "../7", "abc"])
def test_bad_job_id_never_reaches_qstat(torque_bin: tuple[Path, Path], job_id: str) -> None:
    bin_dir, db = torque_bin
    with pytest.raises(NodeError, match="not a job id"):
        Torque(str(bin_dir)).job(job_id)
    assert calls(db) == []


def test_missing_qstat_is_a_node_error(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="batch.bin_dir"):
        Torque(str(tmp_path)).job("7")


def test_offline_node_through_standin(torque_bin: tuple[Path, Path]) -> None:
    bin_dir, db = torque_bin
    Torque(str(bin_dir)).offline_node("n2", "libvirtd down:\nconnection refused " + "y" * 300)
    note = read_db(db)["nodes"]["n2"]["note"]
    assert read_db(db)["nodes"]["n2"]["state"] == "offline"
    assert note.startswith("vtorque: libvirtd down: connection refused yyy")
    assert len(note) <= 200 and "\n" not in note
    assert calls(db) == [{"prog": "pbsnodes", "argv": ["pbsnodes", "-o", "-N", note, "n2"]}]


def test_offline_node_refuses_option_like_names(torque_bin: tuple[Path, Path]) -> None:
    bin_dir, db = torque_bin
    with pytest.raises(NodeError, match="not a valid node name"):
        Torque(str(bin_dir)).offline_node("-c", "x")
    assert calls(db) == []


def test_offline_node_failure_is_a_command_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("torque", bin_dir, fail={"pbsnodes": {
        "exit": 1, "stderr": "pbsnodes: Unauthorized Request  MSG=operator required\n"}})
    with pytest.raises(CommandError, match="Unauthorized Request"):
        Torque(str(bin_dir)).offline_node("n1", "x")


def test_standin_env_var_wins_over_db_path(torque_bin: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    bin_dir, db = torque_bin
    other = install("torque", tmp_path / "other", jobs={"5.else": STANDIN_JOB})
    env = proc.clean_env({"VTORQUE_STANDIN_DB": str(other)})
    done = proc.run([str(bin_dir / "qstat"), "-f", "-x", "5"], timeout=20, env=env)
    assert "<Job_Id>5.else</Job_Id>" in done.stdout
    assert calls(db) == [] and len(calls(other)) == 1


def test_foreign_pbs_module_is_ignored(torque_bin: tuple[Path, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenPBS hooks import a module called `pbs` with nothing of libtorque's API in it.
    monkeypatch.setitem(sys.modules, "pbs", types.ModuleType("pbs"))
    bin_dir, db = torque_bin
    assert Torque(str(bin_dir)).job("7").nodes == ("n1", "n2")
    assert [c["prog"] for c in calls(db)] == ["qstat"]


def test_pbs_python_can_be_switched_off(torque_bin: tuple[Path, Path],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = types.ModuleType("pbs")
    for name in ("pbs_connect", "pbs_default", "pbs_statjob", "pbs_disconnect"):
        setattr(broken, name, lambda *a: pytest.fail("pbs_python used although disabled"))
    monkeypatch.setitem(sys.modules, "pbs", broken)
    bin_dir, db = torque_bin
    assert Torque(str(bin_dir), use_pbs_python=False).job("7").user == "alice"
    assert len(calls(db)) == 1
