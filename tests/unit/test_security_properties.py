"""Attacks on every parser, by hypothesis: whatever text a user (or a broken batch
server) gets into the request, a size, a boolean, Torque's XML, OpenPBS's JSON, Slurm's
`scontrol show job -dd` text or a host list, the parser gives a result or one error of
the project's own, one bounded line without control characters. Nothing else escapes
(no KeyError, ValueError, RecursionError, UnicodeError: each of those was a traceback in
a hook, and a traceback in Slurm's Prolog drains the node)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vtorque import config as config_mod
from vtorque.batch.hostlist import expand_hostlist
from vtorque.batch.openpbs import parse_qstat_json
from vtorque.batch.pbs import parse_exec_host, parse_variable_list
from vtorque.batch.slurm_record import parse_show_job
from vtorque.batch.torque import parse_qstat_xml
from vtorque.errors import NodeError, RequestError, UserError, VtorqueError
from vtorque.request import VM_KEYS, decode_pairs, parse_request
from vtorque.units import parse_bool, parse_size_mib

DATA = Path(__file__).resolve().parents[1] / "data"
PROPERTY = settings(database=None, deadline=None, max_examples=300,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# Characters that broke parsers: Unicode digits, letters that case-fold onto ASCII
# (Kelvin sign, long s, dotless i, Turkish I), separators Python splits at, controls.
TRICKY = "\u0661\u0663\u00b2\u2460\uff11\u212a\u017f\u0131\u0130\u1e9e\x1c\x1d\x1e\x1f" \
         "\x85\u2028\u2029\x00\x0b\x0c\r\n\t\x1b\u202e\udcff"
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\ud800-\udfff]")
_TEXT = st.text(alphabet=st.one_of(st.characters(), st.sampled_from(TRICKY),
                                   st.sampled_from("0123456789KMGTkmgtiIbB=,;.-_/[]:() ")),
                max_size=80)


def one_clean_line(error: Exception, limit: int = 1200) -> None:
    message = str(error)
    assert message and len(message) <= limit, message
    assert not _CONTROL.search(message), repr(message)


@pytest.fixture(scope="module")
def site_config(tmp_path_factory: pytest.TempPathFactory):
    pool = tmp_path_factory.mktemp("pool")
    return config_mod.parse(f"image_pool: {pool}\nibverbs: {{soft_roce: true}}\n"
                            "network: {mode: network}\n", str(pool / "vtorque.yaml"))


# --- the request ----------------------------------------------------------------------------

_VALUES = st.one_of(_TEXT, st.sampled_from(["4\u212a", "1G\u0131B", "\u0661", "yes\u212a",
                                            "y\u0130s", "\u00b2", "4G\n   UserId=root(0)"]))
_PAIR_TEXT = st.lists(st.tuples(st.one_of(st.sampled_from(VM_KEYS), _TEXT), _VALUES),
                      min_size=1, max_size=5).map(
    lambda pairs: ",".join(f"{k}={v}" for k, v in pairs))


@PROPERTY
@given(texts=st.lists(st.one_of(_TEXT, _PAIR_TEXT), min_size=1, max_size=3))
@example(texts=["ram=4\u212a"])            # the Kelvin sign: a KeyError in the unit table
@example(texts=["disk=1\u212aiB"])
@example(texts=["vcpus=\u0661"])
@example(texts=["img=x\n2026-01-01 00:00:00 1 ERROR forged line"])
def test_any_request_is_a_request_or_one_line_user_error(site_config, texts) -> None:
    try:
        parse_request(texts, site_config)
    except RequestError as exc:
        one_clean_line(exc, 400)


@PROPERTY
@given(text=st.one_of(_TEXT, _PAIR_TEXT.map(lambda t: t.replace(",", ";"))))
def test_any_encoded_request_from_the_batch_system_is_pairs_or_a_user_error(text) -> None:
    try:
        pairs = decode_pairs(text)
    except RequestError as exc:
        one_clean_line(exc, 400)
        return
    assert set(pairs) <= set(VM_KEYS)


@PROPERTY
@given(text=_TEXT)
@example(text="4\u212a")
@example(text="2\u212aib")
@example(text="\u0661\u0662G")
def test_any_size_is_mib_or_a_value_error(text) -> None:
    try:
        mib = parse_size_mib(text)
    except ValueError as exc:
        one_clean_line(exc)
        return
    assert isinstance(mib, int) and mib >= 0
    assert text.strip(" \t").isascii()


@PROPERTY
@given(text=_TEXT)
@example(text="\u0130")
@example(text="o\u212a")
@example(text="yes\u2003")
def test_any_boolean_is_a_bool_or_a_value_error(text) -> None:
    try:
        value = parse_bool(text)
    except ValueError as exc:
        one_clean_line(exc)
        return
    assert isinstance(value, bool) and text.isascii()


# --- batch output ---------------------------------------------------------------------------

def parsed_or_refused(parse, text: str, job_id: str) -> None:
    try:
        parse(text, job_id)
    except (NodeError, UserError) as exc:
        one_clean_line(exc)


_ATTR = st.sampled_from(["Job_Id", "Job_Owner", "euser", "egroup", "exec_host", "job_state",
                         "run_count", "start_count", "Variable_List", "comment", "ctime",
                         "Account_Name", "Job_Name", "queue", "init_work_dir"])
_XML_VALUE = st.one_of(_TEXT, st.sampled_from(["n1/0-1+n2/\u0663", "n1/0\u00b2", "2\u00b2",
                                               "VTORQUE_VM=img=x,VTORQUE_VM=img=y",
                                               "alice@h", "1796170623", "R"]))


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def torque_records(draw) -> str:
    items = draw(st.lists(st.tuples(_ATTR, _XML_VALUE), max_size=10))
    body = "".join(f"<{k}>{_xml_escape(v)}</{k}>" for k, v in items)
    head = draw(st.sampled_from(["<Job_Id>42.h</Job_Id>", "", "<Job_Id>42.h</Job_Id>" * 2]))
    return f"<?xml version=\"1.0\"?><Data><Job>{head}{body}</Job></Data>"


@PROPERTY
@given(text=st.one_of(_TEXT, torque_records()))
@example(text="<Data><Job><Job_Id>42.h</Job_Id><euser>a</euser>"
              "<exec_host>n1/0</exec_host><start_count>\u00b2</start_count></Job></Data>")
@example(text="<Data>" + "<a>" * 2000 + "</a>" * 2000 + "</Data>")
def test_any_torque_xml_is_a_job_or_one_line_error(text) -> None:
    parsed_or_refused(parse_qstat_xml, text, "42.h")


_JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), _XML_VALUE),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(_ATTR, _TEXT), inner, max_size=3)),
    max_leaves=8)


@st.composite
def openpbs_records(draw) -> str:
    items = draw(st.lists(st.tuples(st.one_of(_ATTR, st.just("Resource_List"),
                                              st.just("exec_vnode")), _JSON_VALUE),
                          max_size=10))
    body = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items)
    return '{"Jobs":{"42.h":{' + body + '}}}'


@PROPERTY
@given(text=st.one_of(_TEXT, openpbs_records()))
@example(text='{"Jobs":{"42.h":{"Job_Owner":"a@h","exec_host":"n1/0*\u00b2"}}}')
@example(text="[" * 100000)
@example(text='{"Jobs":{"42.h":{"Job_Owner":"a@h","foo":005,"bar":"\\,"}}}')
def test_any_openpbs_json_is_a_job_or_one_line_error(text) -> None:
    parsed_or_refused(parse_qstat_json, text, "42.h")


_SLURM_REAL = (DATA / "slurm-22.05-prolog-show-job-dd.txt").read_text()


@st.composite
def slurm_mutations(draw) -> str:
    """The real record with a user-controlled field replaced by tricky text."""
    lines = _SLURM_REAL.split("\n")
    index = draw(st.integers(0, len(lines) - 1))
    value = draw(_TEXT)
    line = lines[index]
    key, eq, _rest = line.partition("=")
    lines[index] = f"{key}{eq}{value}" if eq else value
    if draw(st.booleans()):
        lines.insert(index, "   Comment=vtorque:img=x" + draw(_TEXT))
    return "\n".join(lines)


@PROPERTY
@given(text=st.one_of(_TEXT, slurm_mutations(),
                      _TEXT.map(lambda t: "JobId=42 JobName=" + t + "\n   UserId=a(1)")))
@example(text=_SLURM_REAL.replace("CPU_IDs=", "CPU_IDs=\u0661-\u0663,"))
@example(text=_SLURM_REAL.replace("Restarts=0", "Restarts=\u00b2"))
@example(text='{"jobs": [' * 10000)
@example(text='{"jobs": [{"job_id": 42, "user_name": "a", "user_name": "b"}]}')
def test_any_slurm_output_is_a_job_or_one_line_error(text) -> None:
    job_id = re.search(r"JobId=([0-9]+)", _SLURM_REAL).group(1) \
        if text.startswith(_SLURM_REAL[:10]) else "42"
    parsed_or_refused(parse_show_job, text, job_id)


@PROPERTY
@given(text=st.one_of(_TEXT, st.from_regex(r"[a-z\u0661]{1,3}\[[0-9\u0661,-]{1,8}\]"
                                           r"(,[a-z]{1,3}[0-9]{0,2})*", fullmatch=True)))
@example(text="n[\u0661-\u0663]")
@example(text="n[0-99999999]")
@example(text="a[1-300]b[1-300]")
@example(text="n1\u2003n2")
def test_any_host_list_is_hosts_or_one_line_error(text) -> None:
    try:
        hosts = expand_hostlist(text)
    except NodeError as exc:
        one_clean_line(exc)
        return
    assert text.isascii()           # names, ranges and separators are ASCII, as Slurm's
    for host in hosts:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", host), host


@PROPERTY
@given(text=_TEXT)
@example(text="n1/\u0661-\u0663")
@example(text="n1/0*\u00b2")
def test_any_exec_host_is_hosts_and_slots_or_one_line_error(text) -> None:
    try:
        hosts, slots = parse_exec_host(text)
    except VtorqueError as exc:
        one_clean_line(exc)
        return
    assert len(hosts) == len(slots) and all(isinstance(n, int) for n in slots)


@PROPERTY
@given(text=_TEXT)
def test_any_variable_list_is_variables_or_a_record_error(text) -> None:
    try:
        variables = parse_variable_list(text)
    except UserError as exc:
        one_clean_line(exc)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in variables.items())
