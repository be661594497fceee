"""OpenPBS adapter: qstat -f -F json parsing on real samples and hand-made variants, the
adapter through the stand-ins (tests/standins/openpbs), auto-detection, and every backend
through the same cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.standins import calls, install, read_db
from vtorque.batch import registry
from vtorque.batch.registry import detect, get, registered
from vtorque.errors import UnknownJobError
from vtorque.batch.openpbs import OpenPBS, parse_qstat_json
from vtorque.batch.torque import Torque
from vtorque.errors import CommandError, NodeError

DATA = Path(__file__).resolve().parent.parent / "data"
PBS19 = (DATA / "openpbs-qstat-f-F-json.json").read_text()
PBS23 = (DATA / "openpbs-qstat-f-F-json-23.06.json").read_text()
PBS23_FINISHED = (DATA / "openpbs-qstat-fx-F-json-finished-23.06.json").read_text()


def pbs_json(job: dict, job_id: str = "12[1].pbs") -> str:
    return json.dumps({"timestamp": 1750368487, "pbs_version": "23.06.06",
                       "pbs_server": "pbs", "Jobs": {job_id: job}}, indent="\t")


JOB = {
    "Job_Name": "vmjob",
    "Job_Owner": "alice@login1",
    "euser": "alice",
    "egroup": "hpc",
    "job_state": "R",
    "queue": "workq",
    "exec_host": "n1/0*2+n2/0*2+n1/1*4",
    "Resource_List": {"ncpus": 8, "nodect": 2, "select": "2:ncpus=4"},
    "Variable_List": {"PBS_O_WORKDIR": "/home/alice/run", "VTORQUE_VM": "img=x;vcpus=2",
                      "PBS_O_PATH": "/usr/bin:/bin", "PBS_NUM_NODES": 2},
    "run_count": 3,
}


# --- the real samples ----------------------------------------------------------------------------

def test_sample_pbspro19_two_node_job() -> None:
    ctx = parse_qstat_json(PBS19, "12860476.meta-pbs.metacentrum.cz")
    assert ctx.scheduler == "openpbs"
    assert ctx.nodes == ("charon24", "charon21") and ctx.slots == (2, 2)
    # No euser/egroup in the sample: the owner comes from Job_Owner (user@REALM).
    assert (ctx.user, ctx.group) == ("jan_brezina", None)
    assert (ctx.job_name, ctx.queue, ctx.state, ctx.run_count) == ("swrap_01", "charon_2h",
                                                                   "R", 1)
    assert ctx.workdir.endswith("/swrap/testing/integrated/01_mpi4py")
    assert ctx.variables["PBS_RESC_MEM"] == "4294967296"      # a JSON number, kept as text
    assert ctx.vm_request is None


def test_sample_openpbs23_leading_newline_and_short_id() -> None:
    assert PBS23.startswith("\n")
    ctx = parse_qstat_json(PBS23, "1")
    assert ctx.job_id == "1"
    assert (ctx.user, ctx.nodes, ctx.slots) == ("fireuser", ("pbs",), (1,))
    assert ctx.variables["F7T_version"] == "v2.0.0"
    assert ctx.workdir == "/home/fireuser"


@pytest.mark.parametrize("job_id, user, state", [
    ("1004.pbs", "fireuser", "F"),
    ("1005", "fireuser", "F"),
    ("1006.pbs", "firesrv", "R"),
])
def test_sample_finished_jobs(job_id: str, user: str, state: str) -> None:
    ctx = parse_qstat_json(PBS23_FINISHED, job_id)
    assert (ctx.user, ctx.state, ctx.nodes) == (user, state, ("pbs",))


def test_sample_missing_job_is_a_node_error() -> None:
    with pytest.raises(NodeError, match="does not hold job 1007"):
        parse_qstat_json(PBS23_FINISHED, "1007")


# --- hand-made variants --------------------------------------------------------------------------

def test_hand_made_job() -> None:
    ctx = parse_qstat_json(pbs_json(JOB), "12[1]")
    assert ctx.job_id == "12[1]"
    assert (ctx.user, ctx.group) == ("alice", "hpc")          # euser/egroup win
    assert ctx.nodes == ("n1", "n2") and ctx.slots == (6, 2)  # repeats summed
    assert ctx.vm_request == "img=x;vcpus=2" and ctx.is_vm_job
    assert ctx.variables["PBS_NUM_NODES"] == "2"
    assert ctx.run_count == 3


def test_variable_list_as_text_is_parsed_like_torque() -> None:
    job = dict(JOB, Variable_List="PBS_O_WORKDIR=/w,VTORQUE_VM=vcpus=4,P=a\\,b")
    ctx = parse_qstat_json(pbs_json(job), "12[1].pbs")
    assert (ctx.workdir, ctx.vm_request, ctx.variables["P"]) == ("/w", "vcpus=4", "a,b")


def test_escaped_comma_kept_by_json_is_unescaped() -> None:
    job = dict(JOB, Variable_List={"P": "a\\,b"})              # JSON "a\\,b" -> text a\,b
    assert parse_qstat_json(pbs_json(job), "12[1]").variables["P"] == "a,b"


def test_numbers_keep_their_spelling() -> None:
    text = pbs_json(JOB).replace('"PBS_NUM_NODES": 2', '"X": 1.50')
    assert parse_qstat_json(text, "12[1]").variables["X"] == "1.50"


def test_repairs_invalid_escape_from_pbs_before_20() -> None:
    # openpbs PR #2049: \, and \' were printed as they are stored, which JSON refuses.
    text = pbs_json(JOB).replace('"/usr/bin:/bin"', '"/usr/bin\\,/bin\\\'s"')
    with pytest.raises(ValueError):
        json.loads(text)
    assert parse_qstat_json(text, "12[1]").variables["PBS_O_PATH"] == "/usr/bin,/bin's"


def test_repairs_unquoted_leading_zero_number() -> None:
    # openpbs issue #1255: all-digit variables are printed bare; 005 is not JSON.
    text = pbs_json(JOB).replace('"PBS_NUM_NODES": 2', '"foo": 005,\n"when": 12:30')
    with pytest.raises(ValueError):
        json.loads(text)
    ctx = parse_qstat_json(text, "12[1]")
    assert (ctx.variables["foo"], ctx.variables["when"]) == ("005", "12:30")
    assert ctx.vm_request == "img=x;vcpus=2"                  # strings with ':' untouched


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True),
                       st.text(st.characters(blacklist_characters="\\"), max_size=30),
                       max_size=8))
def test_any_variable_text_survives_json(variables: dict) -> None:
    job = dict(JOB, Variable_List=dict(variables, VTORQUE_VM="img=x;vcpus=2"))
    ctx = parse_qstat_json(pbs_json(job), "12[1]")
    assert dict(ctx.variables) == dict(variables, VTORQUE_VM="img=x;vcpus=2")


@pytest.mark.parametrize("text, match", [
    ('{"Jobs":{"1.pbs":{"Job_Name":"a "quoted" name"}}}', "cannot parse"),  # issue #2541
    ("qstat: cannot connect to server pbs (errno=15010)", "cannot parse"),
    ("", "cannot parse"),
    ('{"timestamp":1}', "does not hold job"),
    ('{"Jobs":[]}', "no Jobs object"),
    ('{"Jobs":{"1.pbs":"R"}}', "does not hold job"),
])
def test_bad_output_is_a_node_error(text: str, match: str) -> None:
    with pytest.raises(NodeError, match=match):
        parse_qstat_json(text, "1")


def test_missing_owner_is_a_node_error() -> None:
    job = {k: v for k, v in JOB.items() if k not in ("euser", "Job_Owner")}
    with pytest.raises(NodeError, match="owner"):
        parse_qstat_json(pbs_json(job), "12[1]")


# --- end to end through the stand-ins ------------------------------------------------------------

@pytest.fixture
def pbs_bin(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    job = dict(JOB, Variable_List=dict(JOB["Variable_List"], LEVEL="005"))
    return bin_dir, install("openpbs", bin_dir, jobs={"7.pbs": job})


def test_job_through_standin(pbs_bin: tuple[Path, Path]) -> None:
    bin_dir, db = pbs_bin
    ctx = OpenPBS(str(bin_dir), timeout=20).job("7")
    assert (ctx.job_id, ctx.nodes, ctx.slots) == ("7", ("n1", "n2"), (6, 2))
    assert ctx.vm_request == "img=x;vcpus=2"
    assert ctx.variables["LEVEL"] == "005"                    # printed bare, repaired
    assert calls(db) == [{"prog": "qstat", "argv": ["qstat", "-f", "-F", "json", "-x", "7"]}]


def test_unknown_job_through_standin(pbs_bin: tuple[Path, Path]) -> None:
    bin_dir, _ = pbs_bin
    with pytest.raises(UnknownJobError, match="job 8 is unknown"):
        OpenPBS(str(bin_dir)).job("8")


def test_other_qstat_failure_is_a_command_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("openpbs", bin_dir, fail={"qstat": {
        "exit": 66, "stderr": "Connection refused\nqstat: cannot connect to server pbs "
                              "(errno=15010)\n"}})
    with pytest.raises(CommandError, match="errno=15010") as info:
        OpenPBS(str(bin_dir)).job("7")
    assert not isinstance(info.value, UnknownJobError)


def test_offline_node_through_standin(pbs_bin: tuple[Path, Path]) -> None:
    bin_dir, db = pbs_bin
    OpenPBS(str(bin_dir)).offline_node("n1", "guest never answered\r\n(rank 0)")
    node = read_db(db)["nodes"]["n1"]
    assert node == {"state": "offline",
                    "comment": "vtorque: guest never answered (rank 0)"}
    assert calls(db) == [{"prog": "pbsnodes", "argv": [
        "pbsnodes", "-o", "-C", "vtorque: guest never answered (rank 0)", "n1"]}]


def test_offline_node_refuses_bad_names(pbs_bin: tuple[Path, Path]) -> None:
    bin_dir, db = pbs_bin
    for bad in ("-r", "n1 n2", "", "n1/0"):
        with pytest.raises(NodeError, match="not a valid node name"):
            OpenPBS(str(bin_dir)).offline_node(bad, "x")
    assert calls(db) == []


# --- every backend through the same cases --------------------------------------------------------

EXEC_HOST = {"torque": "n1/0-1+n2/0-1", "openpbs": "n1/0*2+n2/0*2"}


def same_job(kind: str) -> dict:
    return {"Job_Name": "vmjob", "Job_Owner": "alice@login1", "euser": "alice",
            "egroup": "hpc", "job_state": "R", "queue": "batch",
            "exec_host": EXEC_HOST[kind], "run_count": "2",
            "Variable_List": {"PBS_O_WORKDIR": "/home/alice", "VTORQUE_VM": "img=x;vcpus=2",
                              "MSG": "a,b"}}


@pytest.mark.parametrize("kind", ["torque", "openpbs"])
def test_every_backend_same_context(tmp_path: Path, kind: str) -> None:
    bin_dir = tmp_path / "bin"
    db = install(kind, bin_dir, jobs={"21.server": same_job(kind)})
    adapter = get(kind, str(bin_dir))
    ctx = adapter.job("21.server")
    assert ctx.scheduler == kind
    assert (ctx.job_id, ctx.user, ctx.group, ctx.job_name, ctx.queue, ctx.state) == (
        "21.server", "alice", "hpc", "vmjob", "batch", "R")
    assert (ctx.nodes, ctx.slots, ctx.run_count) == (("n1", "n2"), (2, 2), 2)
    assert (ctx.vm_request, ctx.workdir) == ("img=x;vcpus=2", "/home/alice")
    assert ctx.variables["MSG"] == "a,b"
    with pytest.raises(UnknownJobError):
        adapter.job("22.server")
    adapter.offline_node("n2", "broken")
    assert read_db(db)["nodes"]["n2"]["state"] == "offline"


# --- registry and auto-detection -----------------------------------------------------------------

def touch_exe(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)


def test_registry_holds_both_adapters() -> None:
    adapters = registered()
    assert adapters["torque"] is Torque and adapters["openpbs"] is OpenPBS


@pytest.mark.parametrize("kind", ["torque", "openpbs"])
def test_detect_by_qstat_version_when_no_marker(tmp_path: Path, kind: str) -> None:
    bin_dir = tmp_path / "bin"
    db = install(kind, bin_dir)
    assert detect(str(bin_dir)) == kind
    assert isinstance(get("auto", str(bin_dir)), registered()[kind])
    assert {"prog": "qstat", "argv": ["qstat", "--version"]} in calls(db)


@pytest.mark.parametrize("marker, kind", [
    ("pbs_rsub", "openpbs"), ("pbs_release_nodes", "openpbs"), ("pbs_rstat", "openpbs"),
    ("pbs_track", "torque"), ("qchkpt", "torque"), ("momctl", "torque"),
])
def test_detect_by_marker_without_running_anything(tmp_path: Path, marker: str,
                                                   kind: str) -> None:
    other = "openpbs" if kind == "torque" else "torque"
    bin_dir = tmp_path / "bin"
    db = install(other, bin_dir)          # the other family's qstat: must not be asked
    touch_exe(bin_dir, marker)
    assert detect(str(bin_dir)) == kind
    assert calls(db) == []


def test_explicit_name_wins_over_detection(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("torque", bin_dir)
    touch_exe(bin_dir, "pbs_rsub")
    assert isinstance(get("torque", str(bin_dir)), Torque)
    assert isinstance(get("auto", str(bin_dir)), OpenPBS)


def test_both_markers_fall_back_to_qstat_version(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("openpbs", bin_dir)
    touch_exe(bin_dir, "pbs_rsub", "pbs_track")
    assert detect(str(bin_dir)) == "openpbs"


def test_undecidable_bin_dir_is_a_node_error(tmp_path: Path) -> None:
    touch_exe(tmp_path, "qstat", "pbsnodes")          # prints nothing for --version
    with pytest.raises(NodeError, match="set batch.system"):
        detect(str(tmp_path))


def test_empty_bin_dir_is_a_node_error(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="no batch system found"):
        get("auto", str(tmp_path))


def test_unknown_name_is_a_node_error(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="unknown batch system 'lsf'"):
        get("lsf", str(tmp_path))


def test_slurm_commands_win_only_with_a_slurm_adapter(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("torque", bin_dir)                 # slurm-torque wrappers look like this
    touch_exe(bin_dir, *registry.SLURM_MARKERS)
    expected = "slurm" if "slurm" in registered() else "torque"
    assert detect(str(bin_dir)) == expected


def test_non_executable_marker_does_not_count(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("torque", bin_dir)
    (bin_dir / "pbs_rsub").write_text("not a program\n")
    assert detect(str(bin_dir)) == "torque"
