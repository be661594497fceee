"""vtorque/batch/slurm.py: host lists, `scontrol show job` parsing (real 22.05 captures, the
reference samples, 24.11 JSON), the request in the comment, and the adapter end to end
through the stand-in scontrol/scancel (tests/standins/slurm)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.standins import calls, install, read_db
from vtorque.batch import registry
from vtorque.batch.hostlist import count_ids, expand_hostlist
from vtorque.batch.registry import detect, get, registered
from vtorque.batch.slurm import Slurm, job_note
from vtorque.batch.slurm_record import (
    COMMENT_MARKER,
    comment_for_request,
    parse_show_job,
    request_from_comment,
)
from vtorque.errors import CommandError, NodeError, RecordError, UnknownJobError, UserError

DATA = Path(__file__).resolve().parents[1] / "data"
CAPTURE = DATA / "slurm-22.05-prolog-show-job-dd.txt"          # job 1, during its Prolog
ARRAY = DATA / "slurm-22.05-prolog-show-job-dd-array.txt"      # jobs 26 (last task), 28, 27
FORGED = DATA / "slurm-22.05-show-job-forged-lines.txt"        # job 29: line breaks in name
SAMPLES = DATA / "slurm-scontrol-show-job.txt"
JSON_2411 = DATA / "slurm-scontrol-show-job-24.11.json"


# --- host lists ------------------------------------------------------------------------------

# Each expected list is what `scontrol show hostnames` (Slurm 22.05.8) printed for it.
HOSTLISTS = [
    ("n[1-3,5],gpu[01-02]", ["n1", "n2", "n3", "n5", "gpu01", "gpu02"]),
    ("n[01-10]", [f"n{i:02d}" for i in range(1, 11)]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("n[098-102]", ["n098", "n099", "n100", "n101", "n102"]),
    ("n[01-3]", ["n01", "n02", "n03"]),
    ("n[1-03]", ["n1", "n2", "n3"]),
    ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
    ("n[1-2][3-4]", ["n13", "n14", "n23", "n24"]),
    ("n1,n2", ["n1", "n2"]),
    ("n[1-2],m[3]", ["n1", "n2", "m3"]),
    ("x", ["x"]),
    ("rack1-n[1-2]", ["rack1-n1", "rack1-n2"]),
    ("n[5,1-2]", ["n5", "n1", "n2"]),
    ("n[1-2],n1", ["n1", "n2", "n1"]),
    ("a,b c", ["a", "b", "c"]),
    ("n[0-2]", ["n0", "n1", "n2"]),
    ("", []),
]


@pytest.mark.parametrize("text, hosts", HOSTLISTS)
def test_expand_hostlist_matches_scontrol_show_hostnames(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["n[3-1]", "n[]", "n[1-2]x", "n[1-2]-ib", "n[1-2",
                                  "n1]", "n[a-b]", "n[1-2,]", "-n1", "n[[1]]"])
def test_expand_hostlist_refuses_what_scontrol_refuses(text: str) -> None:
    with pytest.raises(NodeError):
        expand_hostlist(text)


def test_expand_hostlist_refuses_absurd_sizes() -> None:
    with pytest.raises(NodeError, match="more than"):
        expand_hostlist("n[0-99999999]")
    with pytest.raises(NodeError, match="more than"):
        expand_hostlist("a[0-999]b[0-999]")


def _real_scontrol(tmp_path: Path) -> dict[str, str] | None:
    """An environment in which the installed scontrol can expand host lists (it needs a
    slurm.conf, not a controller), or None."""
    exe = shutil.which("scontrol")
    if exe is None:
        return None
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=vtcheck\nSlurmctldHost=localhost\n"
                    "NodeName=n1 CPUs=1 State=UNKNOWN\nPartitionName=p Nodes=n1\n")
    return {"PATH": "/usr/bin:/bin", "SLURM_CONF": str(conf)}


def test_expand_hostlist_agrees_with_the_installed_scontrol(tmp_path: Path) -> None:
    env = _real_scontrol(tmp_path)
    if env is None:
        pytest.skip("no scontrol on this machine")
    for text, _ in HOSTLISTS:
        if not text:
            continue
        done = subprocess.run(["scontrol", "show", "hostnames", text], env=env,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.skip(f"scontrol cannot run here: {done.stderr.strip()[:80]}")
        assert expand_hostlist(text) == done.stdout.split(), text


def test_count_ids() -> None:
    assert count_ids("0-1") == 2
    assert count_ids("0-3,8,10-11") == 7
    with pytest.raises(NodeError):
        count_ids("3-1")


# --- the request in the comment --------------------------------------------------------------

def test_comment_round_trip() -> None:
    assert comment_for_request("img=deb12;vcpus=2") == "vtorque:img=deb12;vcpus=2"
    text = comment_for_request("img=deb12", "my own words")
    assert text == "vtorque:img=deb12 my own words"
    assert request_from_comment(text) == "img=deb12"
    assert request_from_comment("an ordinary comment") is None
    assert request_from_comment(None) is None
    assert request_from_comment("Vtorque:img=x") is None


@pytest.mark.parametrize("comment", ["vtorque:", "vtorque: img=x", "vtorque:\timg=x"])
def test_marker_without_request_is_a_user_error(comment: str) -> None:
    with pytest.raises(RecordError, match="no VM request"):
        request_from_comment(comment)


def test_job_note_keeps_an_admins_note_and_stays_one_bounded_line() -> None:
    assert job_note("job 5 refused: bad image") == "vtorque: job 5 refused: bad image"
    assert job_note("vtorque: x", "checked by admin") == "vtorque: x | earlier: checked by admin"
    assert job_note("vtorque: x", "vtorque: old") == "vtorque: x"
    long = job_note("a\nb\x00c " * 200)
    assert "\n" not in long and "\x00" not in long and len(long) <= 400


# --- parsing real output -----------------------------------------------------------------

def test_real_22_05_prolog_capture() -> None:
    job = parse_show_job(CAPTURE.read_text(), "1")
    ctx = job.ctx
    assert (ctx.scheduler, ctx.job_id, ctx.user, ctx.group) == ("slurm", "1", "root", "root")
    assert (ctx.job_name, ctx.queue, ctx.state) == ("vt-job.sh", "p", "RUNNING")
    assert (ctx.nodes, ctx.slots) == (("vm",), (2,))
    assert ctx.vm_request == "img=testguest;vcpus=1" and ctx.is_vm_job
    assert (ctx.workdir, ctx.run_count) == ("/tmp", 1)
    assert job.batch_host == "vm" and job.comment == "vtorque:img=testguest;vcpus=1"
    assert job.admin_comment is None
    assert job.fields["Reason"] == "Prolog"


def test_array_job_id_selects_its_own_record() -> None:
    """`scontrol show job 26` for an array's last task prints every task (the Prolog
    guide's CAUTION); the record whose JobId is 26 is the one."""
    text = ARRAY.read_text()
    assert len(re.findall(r"^JobId=", text, re.M)) == 3
    last = parse_show_job(text, "26")
    assert last.ctx.state == "RUNNING" and last.fields["ArrayTaskId"] == "2"
    first = parse_show_job(text, "27")
    assert first.ctx.state == "COMPLETED" and first.fields["ArrayTaskId"] == "0"
    assert parse_show_job(text, "26_1").fields["JobId"] == "28"


def test_forged_lines_make_a_vm_job_a_user_error() -> None:
    """Real capture: a job name and a comment holding line breaks forge UserId= and
    NodeList= lines. For a job carrying the marker that is a RecordError (UserError)."""
    text = FORGED.read_text()
    assert "   UserId=evil(7)\n" in text
    with pytest.raises(RecordError, match="UserId= appears 2 times") as info:
        parse_show_job(text, "29")
    assert isinstance(info.value, UserError)


def test_forged_lines_in_a_job_without_marker_are_read_leniently() -> None:
    text = FORGED.read_text().replace("Comment=vtorque:img=x", "Comment=img=x")
    job = parse_show_job(text, "29")
    assert job.ctx.user == "evil" and not job.ctx.is_vm_job     # first value; never acted on


def _samples() -> dict[str, str]:
    blocks = re.findall(r"#----- BEGIN -----\n(.*?)#----- END -----",
                        SAMPLES.read_text(), re.S)
    return {re.match(r"JobId=(\d+)", b).group(1): b for b in blocks}


def test_reference_sample_multi_line() -> None:
    ctx = parse_show_job(_samples()["8477"], "8477").ctx
    assert (ctx.user, ctx.group, ctx.queue, ctx.state) == ("aion", "aion", "defq", "RUNNING")
    assert (ctx.nodes, ctx.slots) == (("dgx019",), (4,))
    assert ctx.job_name == "train-93778f97-a3b0-4d7d-bdab-b695e51c6806.script"
    assert ctx.workdir.endswith("train-93778f97-a3b0-4d7d-bdab-b695e51c6806")
    assert ctx.vm_request is None


def test_reference_samples_one_line_are_read_leniently() -> None:
    samples = _samples()
    ctx = parse_show_job(samples["270"], "270").ctx
    assert (ctx.user, ctx.state, ctx.nodes, ctx.slots) == ("matgenix-dwa", "COMPLETED",
                                                          ("matgenixdb",), (1,))
    assert ctx.job_name == "submit.script"
    array = parse_show_job(samples["123"], "123").ctx
    assert len(array.nodes) == 32 and array.nodes[:2] == ("r2i2n4", "r2i2n5")
    assert array.slots == (80,) * 32                          # NumCPUs=2560 over 32 nodes
    # Two records claim id 123 (task 0 RUNNING, the rest PENDING): an ambiguous record
    # decides nothing, so its state is unknown (the reaper keeps what it cannot tell).
    assert array.state is None


def test_one_line_output_of_a_vm_job_is_refused() -> None:
    line = _samples()["270"].replace("Power= ", "Comment=vtorque:img=x Power= ")
    with pytest.raises(RecordError, match="one-line"):
        parse_show_job(line, "270")


def test_json_24_11() -> None:
    ctx = parse_show_job(JSON_2411.read_text(), "6").ctx
    assert (ctx.user, ctx.group, ctx.queue, ctx.state) == ("root", "root", "part01", "PENDING")
    assert (ctx.nodes, ctx.slots, ctx.vm_request) == ((), (), None)
    assert (ctx.job_name, ctx.workdir, ctx.run_count) == ("job.sh", "/", 1)


def _json_job(**over) -> str:
    import json
    job = {"job_id": 7, "user_name": "alice", "group_name": "hpc", "name": "j",
           "partition": "batch", "job_state": "RUNNING", "nodes": "n[1-2]",
           "batch_host": "n1", "restart_cnt": 2, "comment": "vtorque:img=deb12 hi",
           "current_working_directory": "/home/alice", "cpus": 8,
           "job_resources": {"allocated_nodes": [{"nodename": "n1", "cpus": 4},
                                                 {"nodename": "n2", "cpus": 4}]}}
    job.update(over)
    return json.dumps({"jobs": [job]})


def test_json_v0_0_38_style_and_newer_numbers() -> None:
    ctx = parse_show_job(_json_job(), "7").ctx
    assert (ctx.nodes, ctx.slots, ctx.run_count) == (("n1", "n2"), (4, 4), 3)
    assert ctx.vm_request == "img=deb12"
    newer = _json_job(job_state=["RUNNING", "CONFIGURING"],
                      restart_cnt={"set": True, "infinite": False, "number": 0},
                      job_resources={"nodes": {"allocation": [
                          {"name": "n1", "cpus": {"count": 3, "used": 3}},
                          {"name": "n2", "cpus": {"count": 5, "used": 5}}]}})
    ctx = parse_show_job(newer, "7").ctx
    assert (ctx.state, ctx.slots, ctx.run_count) == ("RUNNING", (3, 5), 1)
    with pytest.raises(NodeError, match="0 records"):
        parse_show_job(_json_job(), "8")


def _record(**fields: str) -> str:
    head = {"JobId": "5", "JobName": "j"}
    lines = [f"JobId={fields.pop('JobId', head['JobId'])} "
             f"JobName={fields.pop('JobName', head['JobName'])}"]
    defaults = {"UserId": "alice(1001)", "GroupId": "hpc(100)", "JobState": "RUNNING",
                "Restarts": "0", "Partition": "batch", "NodeList": "n[1-2]",
                "BatchHost": "n1", "NumCPUs": "4", "WorkDir": "/home/alice"}
    defaults.update(fields)
    for key, value in defaults.items():
        if value is not None:
            lines.append(f"   {key}={value}")
    return "\n".join(lines) + "\n   \n\n"


def test_batch_host_is_the_mother_superior() -> None:
    ctx = parse_show_job(_record(NodeList="n[1-3]", BatchHost="n2", NumCPUs="6"), "5").ctx
    assert ctx.nodes == ("n2", "n1", "n3") and ctx.slots == (2, 2, 2)


def test_slots_from_detail_lines_and_from_numcpus() -> None:
    text = _record(NumCPUs="7").replace(
        "   WorkDir", "   JOB_GRES=(null)\n     Nodes=n1 CPU_IDs=0-3 Mem=1 GRES=\n"
        "     Nodes=n2 CPU_IDs=0-2 Mem=1 GRES=\n   WorkDir")
    assert parse_show_job(text, "5").ctx.slots == (4, 3)
    grouped = _record(NodeList="n[1-3]", NumCPUs="6").replace(
        "   WorkDir", "     Nodes=n[1-3] CPU_IDs=0-1 Mem=1 GRES=\n   WorkDir")
    assert parse_show_job(grouped, "5").ctx.slots == (2, 2, 2)
    assert parse_show_job(_record(NumCPUs="5"), "5").ctx.slots == (3, 2)


@pytest.mark.parametrize("comment, fragment", [
    ("vtorque:img=x\n   NodeList=n9", "NodeList= appears 2 times"),
    ("vtorque:img=x\nplain words", "not indented"),
    ("vtorque:img=x\n     Nodes=n1 CPU_IDs=0-63 Mem=1 GRES=", "detail lines"),
    ("vtorque:img=x\n   loose", "not key=value"),
])
def test_ambiguous_vm_records_are_refused(comment: str, fragment: str) -> None:
    with pytest.raises(RecordError, match=re.escape(fragment)):
        parse_show_job(_record(Comment=comment), "5")


def test_records_that_cannot_be_used_are_node_errors() -> None:
    with pytest.raises(NodeError, match="does not hold job 6"):
        parse_show_job(_record(), "6")
    with pytest.raises(NodeError, match="no job record"):
        parse_show_job("No jobs in the system\n", "5")
    with pytest.raises(NodeError, match="broken JSON"):
        parse_show_job("{not json", "5")
    vm = "vtorque:img=x"
    with pytest.raises(NodeError, match="Restarts"):
        parse_show_job(_record(Restarts="x", Comment=vm), "5")
    with pytest.raises(NodeError, match="no JobState"):
        parse_show_job(_record(JobState=None, Comment=vm), "5")
    with pytest.raises(NodeError, match="descending"):
        parse_show_job(_record(NodeList="n[2-1]", Comment=vm), "5")
    # slurmctld cannot name the owner: the job is refused, no node is blamed.
    with pytest.raises(RecordError, match="no usable owner"):
        parse_show_job(_record(UserId="(null)(1234)", Comment=vm), "5")


def test_a_job_without_vms_never_fails_on_its_fields() -> None:
    """Nothing of such a job is acted upon: a node must not fail (drain) for it."""
    ctx = parse_show_job(_record(UserId="(null)(1234)", Restarts="x", JobState=None,
                                 NodeList="n[2-1]"), "5").ctx
    assert (ctx.user, ctx.run_count, ctx.state, ctx.nodes) == ("", 1, None, ())
    assert not ctx.is_vm_job


def test_requeued_job_has_no_nodes_and_counts_its_starts() -> None:
    ctx = parse_show_job(_record(JobState="PENDING", Restarts="2", NodeList="",
                                 BatchHost=None), "5").ctx
    assert (ctx.nodes, ctx.slots, ctx.run_count, ctx.state) == ((), (), 3, "PENDING")


# --- the adapter through the stand-ins ---------------------------------------------------------

JOB = {"JobName": "vmjob", "UserId": "alice(1001)", "GroupId": "hpc(100)",
       "JobState": "RUNNING", "Partition": "batch", "NodeList": "n[1-2]", "NumCPUs": 8,
       "CPU_IDs": {"n1": "0-3", "n2": "0-3"}, "Comment": "vtorque:img=deb12;vcpus=2",
       "WorkDir": "/home/alice/run"}


@pytest.fixture
def slurm(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    db = install("slurm", bin_dir, jobs={"42": dict(JOB)})
    return Slurm(str(bin_dir), environ={}), db


def test_adapter_reads_the_job_with_scontrol_show_job_dd(slurm) -> None:
    adapter, db = slurm
    ctx = adapter.job("42")
    assert (ctx.user, ctx.nodes, ctx.slots, ctx.vm_request) == (
        "alice", ("n1", "n2"), (4, 4), "img=deb12;vcpus=2")
    assert [c["argv"] for c in calls(db)] == [["scontrol", "show", "job", "-dd", "42"]]


def test_adapter_unknown_job_and_failures(slurm) -> None:
    adapter, db = slurm
    with pytest.raises(UnknownJobError, match="Invalid job id specified"):
        adapter.job("43")
    with pytest.raises(NodeError, match="not a job id"):
        adapter.job("-x")
    install("slurm", Path(adapter.bin_dir), jobs={"42": JOB},
            fail={"scontrol": {"exit": 1, "stderr": "slurm_load_jobs error: Unable to "
                                                    "contact slurm controller\n"}})
    with pytest.raises(CommandError, match="Unable to contact"):
        adapter.job("42")


def test_adapter_passes_slurm_conf_only(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    db = install("slurm", bin_dir, jobs={"42": JOB})
    Slurm(str(bin_dir), environ={"SLURM_CONF": "/etc/slurm-test/slurm.conf",
                                 "LD_PRELOAD": "/evil.so"}).job("42")
    assert read_db(db)["last_slurm_conf"] == "/etc/slurm-test/slurm.conf"
    relative = Slurm(str(bin_dir), environ={"SLURM_CONF": "relative"}).query_env()
    assert relative.get("SLURM_CONF") is None
    assert "LD_PRELOAD" not in Slurm(str(bin_dir), environ={"LD_PRELOAD": "x"}).query_env()


def test_offline_node_drains_with_a_readable_reason(slurm) -> None:
    adapter, db = slurm
    adapter.offline_node("n2", "libvirtd down\nsecond line")
    node = read_db(db)["nodes"]["n2"]
    assert node == {"state": "drain", "reason": "vtorque: libvirtd down second line"}
    assert calls(db)[-1]["argv"] == ["scontrol", "update", "nodename=n2", "state=drain",
                                     "reason=vtorque: libvirtd down second line"]
    with pytest.raises(NodeError):
        adapter.offline_node("-n2", "x")


def test_note_cancel_and_requeue_hold(slurm) -> None:
    adapter, db = slurm
    adapter.note_job("42", "vtorque: job 42 refused: image gone", "an admin's note")
    job = read_db(db)["jobs"]["42"]
    assert job["AdminComment"] == "vtorque: job 42 refused: image gone | earlier: an admin's note"
    assert "AdminComment=vtorque: job 42 refused" in subprocess.run(
        [str(Path(adapter.bin_dir) / "scontrol"), "show", "job", "42"],
        capture_output=True, text=True, timeout=30).stdout
    adapter.requeue_hold("42")
    job = read_db(db)["jobs"]["42"]
    assert (job["JobState"], job["Restarts"], job["NodeList"]) == ("PENDING", 1, "")
    assert calls(db)[-1]["argv"] == ["scontrol", "requeuehold", "Incomplete", "42"]
    adapter.cancel_job("42")
    assert read_db(db)["jobs"]["42"]["JobState"] == "CANCELLED"
    assert calls(db)[-1]["argv"] == ["scancel", "-Q", "42"]
    adapter.cancel_job("42")                     # a finished job: no error (-Q)
    adapter.requeue_hold("42")                   # Incomplete: a finished job stays as it is
    assert read_db(db)["jobs"]["42"]["JobState"] == "CANCELLED"
    with pytest.raises(CommandError, match="has already finished"):
        adapter.note_job("42", "late")


def test_requeue_hold_of_a_no_requeue_job_fails(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("slurm", bin_dir, jobs={"42": dict(JOB, Requeue=0)})
    with pytest.raises(CommandError, match="presently disabled"):
        Slurm(str(bin_dir), environ={}).requeue_hold("42")


# --- registry and detection --------------------------------------------------------------------

def test_registry_and_auto_detection(tmp_path: Path) -> None:
    assert registered()["slurm"] is Slurm
    bin_dir = tmp_path / "bin"
    install("slurm", bin_dir)
    assert detect(str(bin_dir)) == "slurm"
    assert isinstance(get("auto", str(bin_dir)), Slurm)
    assert registry.SLURM_MARKERS == Slurm.commands
    assert COMMENT_MARKER == "vtorque:"


def test_missing_scancel_is_a_node_error(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    install("slurm", bin_dir, jobs={"42": JOB})
    os.unlink(bin_dir / "scancel")
    with pytest.raises(NodeError, match="scancel not found"):
        Slurm(str(bin_dir), environ={}).cancel_job("42")
