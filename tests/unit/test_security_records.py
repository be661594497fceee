"""Attacks on the batch server's records: a second copy of an attribute that decides
anything (owner, nodes, variables, the VM request, comment, account, state) smuggled into
Torque's XML, OpenPBS's JSON or Slurm's text. "The last one wins" let a forged second
exec_host start guests on another node; now the record is refused (RecordError: the job
is refused, the node stays in service). The real recordings still parse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vtorque.batch.openpbs import parse_qstat_json
from vtorque.batch.slurm_record import parse_show_job
from vtorque.batch.torque import parse_qstat_xml
from vtorque.errors import RecordError, UserError

DATA = Path(__file__).resolve().parents[1] / "data"
TORQUE = (DATA / "torque-6.1-real-qstat-fx-running.xml").read_text()
OPENPBS = (DATA / "openpbs-23.06-real-qstat-f-F-json-x-running.json").read_text()
SLURM = (DATA / "slurm-22.05-prolog-show-job-dd.txt").read_text()


def refused(parse, text: str, job_id: str) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse(text, job_id)
    assert isinstance(info.value, UserError)        # the job's fault: the node stays
    assert "\n" not in str(info.value) and "ambiguous" in str(info.value)
    return info.value


def test_the_real_recordings_parse() -> None:
    assert parse_qstat_xml(TORQUE, "0.vm").nodes == ("localhost", "vm")
    assert parse_qstat_json(OPENPBS, "16.vm").nodes == ("n1", "n2")
    assert parse_show_job(SLURM, "1").ctx.nodes == ("vm",)


# --- Torque ------------------------------------------------------------------------------------

@pytest.mark.parametrize("element", [
    "<exec_host>evil/0</exec_host>",
    "<Job_Owner>root@localhost</Job_Owner>",
    "<euser>root</euser>",
    "<egroup>root</egroup>",
    "<Variable_List>VTORQUE_VM=img=evil</Variable_List>",
    "<comment>forged</comment>",
    "<Account_Name>other</Account_Name>",
    "<job_state>C</job_state>",
    "<start_count>9</start_count>",
    "<Resource_List><nodes>9:ppn=64</nodes></Resource_List>",
    "<init_work_dir>/root</init_work_dir>",
    "<ctime>1</ctime>",
    "<Job_Id>0.vm</Job_Id>",
])
def test_torque_a_second_deciding_element_is_refused(element: str) -> None:
    """Each element once more at the end of the job (where "last wins" took it); twice
    where the recording has none."""
    tag = re.match(r"<([A-Za-z_]+)>", element).group(1)
    copies = 1 if f"<{tag}>" in TORQUE else 2
    text = TORQUE.replace("</Job></Data>", element * copies + "</Job></Data>")
    refused(parse_qstat_xml, text, "0.vm")


def test_torque_a_second_vm_request_inside_variable_list_is_refused() -> None:
    text = TORQUE.replace(",PBS_O_WORKDIR=", ",VTORQUE_VM=img=evil;vcpus=64,PBS_O_WORKDIR=")
    refused(parse_qstat_xml, text, "0.vm")


def test_torque_a_second_record_of_the_same_job_is_refused() -> None:
    job = re.search(r"<Job>.*</Job>", TORQUE, re.S).group(0)
    text = TORQUE.replace("</Data>", job.replace("localhost/0+vm/0", "evil/0") + "</Data>")
    refused(parse_qstat_xml, text, "0.vm")


def test_torque_a_repeated_harmless_variable_keeps_its_last_value() -> None:
    text = TORQUE.replace(",PBS_O_HOST=vm", ",FOO=1,FOO=2,PBS_O_HOST=vm")
    assert parse_qstat_xml(text, "0.vm").variables["FOO"] == "2"


# --- OpenPBS -----------------------------------------------------------------------------------

def _after(anchor: str, extra: str) -> str:
    assert anchor in OPENPBS, anchor
    return OPENPBS.replace(anchor, anchor + extra, 1)


@pytest.mark.parametrize("text", [
    _after('"exec_host":"n1/0+n2/0",', '"exec_host":"evil/0",'),
    _after('"exec_host":"n1/0+n2/0",', '"exec_vnode":"(evil:ncpus=64)",'),
    _after('"Job_Owner":"vtjob@10.255.255.1",', '"Job_Owner":"root@evil",'),
    _after('"Job_Owner":"vtjob@10.255.255.1",', '"Variable_List":{"VTORQUE_VM":"img=x"},'),
    _after('"VTORQUE_VM":"img=testguest;vcpus=1",', '"VTORQUE_VM":"img=evil;vcpus=64",'),
    _after('"PBS_O_WORKDIR":"/var/tmp/pbs-try",', '"PBS_O_WORKDIR":"/root",'),
    _after('"ncpus":2,\n                "nodect"', ':2,"ncpus":64,"x"'),
    _after('"job_state":"R",', '"comment":"forged","comment":"again",'),
    _after('"job_state":"R",', '"Account_Name":"a","Account_Name":"b",'),
    _after('"job_state":"R",', '"job_state":"F",'),
    _after('"job_state":"R",', '"ctime":"Thu Jan  1 00:00:00 1970",'),
])
def test_openpbs_a_second_deciding_key_is_refused(text: str) -> None:
    """json.loads keeps the last of two equal keys without a word; load_json does not."""
    refused(parse_qstat_json, text, "16.vm")


def test_openpbs_a_second_record_of_the_same_job_is_refused() -> None:
    text = OPENPBS.replace('"Jobs":{', '"Jobs":{"16.vm":{"Job_Owner":"root@evil"},', 1)
    refused(parse_qstat_json, text, "16.vm")


def test_openpbs_a_repeated_harmless_key_is_not_an_error() -> None:
    text = _after('"Hold_Types":"n",', '"Hold_Types":"u",')
    assert parse_qstat_json(text, "16.vm").nodes == ("n1", "n2")


# --- Slurm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "   UserId=alice(1001) GroupId=alice(1001)",
    "   NodeList=evil",
    "   Comment=vtorque:img=evil;vcpus=64",
    "   Account=other",
    "   JobState=COMPLETED",
    "   BatchHost=evil",
])
def test_slurm_a_second_deciding_key_is_refused(line: str) -> None:
    text = SLURM.replace("   Power=", line + "\n   Power=")
    refused(parse_show_job, text, "1")


def test_slurm_json_a_second_deciding_key_is_refused() -> None:
    text = ('{"jobs": [{"job_id": 1, "user_name": "alice", "user_name": "root", '
            '"nodes": "vm", "job_state": "RUNNING", "comment": "vtorque:img=x"}]}')
    refused(parse_show_job, text, "1")


def test_slurm_a_record_without_the_marker_decides_nothing_when_ambiguous() -> None:
    """Not a VM job (no marker): read leniently, but an ambiguous record gives no state, so
    the reaper never takes a forged "COMPLETED" for the end of a job with guests."""
    plain = SLURM.replace("Comment=vtorque:img=testguest;vcpus=1", "Comment=mine")
    forged = plain.replace("JobName=vt-job.sh", "JobName=x\n   JobState=COMPLETED")
    assert parse_show_job(plain, "1").ctx.state == "RUNNING"
    assert parse_show_job(forged, "1").ctx.state is None


def test_slurm_characters_python_splits_at_do_not_split_scontrols_lines() -> None:
    r"""\x1c-\x1e, \x85 and \u2028 end a line for str.splitlines but not for scontrol, which
    prints a job name as it is: the name stays one value, and no forged line appears."""
    for cut in ("\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\x0b", "\x0c"):
        text = SLURM.replace("JobName=vt-job.sh", f"JobName=x{cut}   UserId=alice(1001)")
        job = parse_show_job(text, "1")
        assert job.ctx.user == "root" and job.ctx.job_name == f"x{cut}   UserId=alice(1001)"


def test_slurm_characters_python_splits_at_do_not_split_tokens() -> None:
    text = SLURM.replace("Features=(null)", "Features=a\x1fUserId=alice(1001)")
    job = parse_show_job(text, "1")
    assert job.ctx.user == "root" and job.fields["Features"] == "a\x1fUserId=alice(1001)"
