"""vtorque/osv.py against the OSv REST API stand-in (tests/standins/osv_server.py).

No real OSv guest is involved: the stand-in imitates OSv's httpserver-api from its
published listings and source, and runs fake programs under vtorque's launcher contract.
Each test has its own stand-in on 127.0.0.1 with an ephemeral port and its own guest
file system under tmp_path, so the tests are safe under `pytest -n auto`.
"""

from __future__ import annotations

import io
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.standins.osv_server import OsvStandin, chatter_bytes, parse_command_line
from vtorque.jobshell import osv

TOKEN = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"
FAST = {"poll": 0.02, "http_timeout": 2.0, "grace": 2.0}


@pytest.fixture
def guest(tmp_path):
    with OsvStandin(str(tmp_path / "guest")) as standin:
        yield standin


def run(standin_or_address, command, **kwargs):
    out, err = io.BytesIO(), io.BytesIO()
    if isinstance(standin_or_address, OsvStandin):
        address, port = standin_or_address.address, standin_or_address.port
    else:
        address, port = standin_or_address
    options = {**FAST, **kwargs}
    status = osv.run_job(address, command, port=port, stdout=out, stderr=err, **options)
    return status, out.getvalue(), err.getvalue()


def raw(standin, method, path, form=None):
    """One request straight to the stand-in (to check it against the API description)."""
    data = urllib.parse.urlencode(form).encode() if form else None
    request = urllib.request.Request(f"http://127.0.0.1:{standin.port}{path}", data=data,
                                     method=method)
    if form:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ------------------------------------------------------------------ output and status

def test_output_arrives_and_status_zero(guest):
    status, out, err = run(guest, ["/hello.so"], token=TOKEN)
    assert status == 0
    assert out == b"Hello from the OSv stand-in\n"
    assert err == b""
    # The launcher also left its line on the console (for admins; not what we read).
    assert f"vtorque-exit {TOKEN} 0\n".encode() in guest.console
    # One PUT /app/, with the launcher and the token first.
    (put,) = guest.requests_for("PUT", "/app/")
    assert put == "/app/"


def test_nonzero_status_arrives(guest):
    status, out, err = run(guest, ["/fail.so", "3"])
    assert status == 3
    assert out == b""
    assert err == b"fail.so: exiting with status 3\n"


@pytest.mark.parametrize(("code", "expected"), [("255", 255), ("300", 255), ("-1", 255)])
def test_status_outside_a_byte_becomes_255(guest, code, expected):
    assert run(guest, ["/fail.so", code])[0] == expected


def test_stale_status_of_another_token_is_ignored(guest):
    # A status file at this run's path naming another run's token, and another run's
    # directory with a success in it: neither may end this run early with status 0.
    guest.plant(f"/tmp/vtorque-{TOKEN}/status", f"vtorque-exit {OTHER} 0\n".encode())
    guest.plant(f"/tmp/vtorque-{OTHER}/status", f"vtorque-exit {OTHER} 0\n".encode())
    status, _, err = run(guest, ["/fail.so", "3", "0.5"], token=TOKEN)
    assert status == 3
    assert b"exiting with status 3" in err
    # The stale file was read (and ignored) several times while the program ran.
    assert len(guest.requests_for("GET", f"/file/tmp/vtorque-{TOKEN}/status")) >= 3


def test_partial_status_line_is_not_taken(guest):
    guest.plant(f"/tmp/vtorque-{TOKEN}/status", f"vtorque-exit {TOKEN} 0".encode())
    status, _, _ = run(guest, ["/fail.so", "4", "0.3"], token=TOKEN)
    assert status == 4


def test_large_output_is_complete_and_read_chunks_are_deleted(guest):
    total = 3 * osv.CHUNK_BYTES + 3392
    status, out, err = run(guest, ["/chatter.so", str(total)], token=TOKEN)
    assert status == 0
    assert out == chatter_bytes(total)
    assert err == b"chatter done\n"
    left = sorted(os.listdir(guest.real_path(f"/tmp/vtorque-{TOKEN}")))
    assert left == ["status", "stderr.0", "stdout.3"]


def test_words_reach_the_program_unchanged(guest):
    words = ["two words", 'a "quoted" word', "back\\slash", "\\n stays", "", "~#*?'()<>|"]
    status, out, _ = run(guest, ["/echo.so", *words])
    assert status == 0
    assert out.decode().split("\n")[:-1] == words


def test_command_as_one_string_is_split_without_a_shell(guest):
    status, out, _ = run(guest, "/echo.so 'two words' plain")
    assert status == 0
    assert out == b"two words\nplain\n"


def test_environment_is_set_before_the_program_runs(guest):
    value = "12.server a&b $HOME;x"     # goes through /env/, not through the parser
    status, out, _ = run(guest, ["/env.so", "PBS_JOBID"], env={"PBS_JOBID": value})
    assert status == 0
    assert out == value.encode() + b"\n"


def test_empty_environment_value_unsets_the_variable(guest):
    # OSv refuses POST /env/NAME?val= (HTTP 400): an empty value is unset instead, so a
    # value an earlier job left in the guest's one environment does not show through.
    guest.env["PBS_EMPTY"] = "left by an earlier job"
    status, out, _ = run(guest, ["/env.so", "PBS_EMPTY"], env={"PBS_EMPTY": ""})
    assert status == 0
    assert out == b"<unset>\n"
    assert guest.requests_for("DELETE", "/env/PBS_EMPTY")
    assert raw(guest, "POST", "/env/X?val=")[0] == 400


# ---------------------------------------------------------------------- refusals

@pytest.mark.parametrize("word", ["a;b", ";", "x&y", "bang!", "$HOME", "new\nline",
                                  "caf\u00e9", "tab\there"])
def test_words_the_parser_would_change_are_refused_before_any_request(guest, word):
    status, out, err = run(guest, ["/echo.so", word])
    assert status == osv.STATUS_FAILED
    assert out == b""
    assert err.startswith(b"vtorque: osv: OSv command word")
    assert err.count(b"\n") == 1
    assert guest.requests == []


def test_semicolon_refused_with_an_exception_by_execute(guest):
    with pytest.raises(osv.CommandRefused, match="';'"):
        osv.execute(guest.address, "/hello.so;", port=guest.port, stdout=io.BytesIO(),
                    stderr=io.BytesIO(), **FAST)
    assert guest.requests == []


def test_empty_command_and_bad_env_name_are_refused(guest):
    assert run(guest, [])[0] == osv.STATUS_FAILED
    assert run(guest, ["/env.so", "X"], env={"BAD-NAME": "1"})[0] == osv.STATUS_FAILED
    assert guest.requests == []


# ------------------------------------------------------------------ failures of the guest

def test_guest_dying_mid_job_is_a_clear_error(guest):
    began = time.monotonic()
    status, out, err = run(guest, ["/crash.so", "0.3"], grace=0.5, http_timeout=0.5)
    assert status == osv.STATUS_FAILED
    assert out == b"about to crash\n"          # what it printed before it died arrived
    assert b"did not answer" in err and b"connection refused" in err
    assert b"Traceback" not in err
    assert time.monotonic() - began < 5


def test_http_400_from_the_api_is_reported(guest):
    guest.inject_error("PUT", "/app/", 400, "Bad formatted command")
    status, out, err = run(guest, ["/hello.so"])
    assert status == osv.STATUS_FAILED
    assert out == b""
    assert b"starting the command: HTTP 400: Bad formatted command" in err


def test_start_without_a_reply_is_not_retried(guest):
    guest.inject_delay("PUT", "/app/", 1.0)
    status, _, err = run(guest, ["/hello.so"], http_timeout=0.3)
    assert status == osv.STATUS_FAILED
    assert b"PUT /app/ failed (timed out)" in err
    assert b"not retried so that it cannot run twice" in err
    assert len(guest.requests_for("PUT", "/app/")) == 1


def test_image_without_the_launcher_is_named_as_the_cause(tmp_path):
    with OsvStandin(str(tmp_path / "guest"), launcher_installed=False) as standin:
        status, _, err = run(standin, ["/hello.so"])
    assert status == osv.STATUS_FAILED
    assert b"HTTP 500: Failed to load object: /usr/lib/vtorque-launch.so" in err
    assert b"does the image contain the vtorque launcher" in err


def test_program_that_finishes_without_a_status_is_an_error(guest, monkeypatch):
    # A "launcher" that does not keep the contract: /hello.so ignores its arguments.
    monkeypatch.setattr(osv, "FINISH_GRACE", 0.3)
    status, _, err = run(guest, ["/x.so"], launcher="/hello.so")
    assert status == osv.STATUS_FAILED
    assert b"finished but left no exit status" in err


def test_missing_program_gives_127_from_the_launcher(guest):
    status, _, err = run(guest, ["/no-such-program.so"])
    assert status == 127
    assert b"Failed to load object: /no-such-program.so" in err


def test_overall_timeout(guest):
    began = time.monotonic()
    status, _, err = run(guest, ["/sleep.so", "30"], timeout=0.3)
    assert status == osv.STATUS_FAILED
    assert b"did not finish within 0.3 s" in err
    assert time.monotonic() - began < 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_guest_times_out_within_the_bound():
    began = time.monotonic()
    status, out, err = run(("127.0.0.1", _free_port()), ["/hello.so"], grace=0.5,
                           http_timeout=0.5)
    elapsed = time.monotonic() - began
    assert status == osv.STATUS_FAILED
    assert b"connection refused" in err and b"did not answer" in err
    assert out == b""
    assert 0.5 <= elapsed < 0.5 + 0.5 + 1.5


def test_guest_that_accepts_but_never_answers_times_out_within_the_bound():
    with socket.socket() as sock:          # a black hole: connects, never replies
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        began = time.monotonic()
        status, _, err = run(("127.0.0.1", sock.getsockname()[1]), ["/hello.so"],
                             grace=0.5, http_timeout=0.3)
        elapsed = time.monotonic() - began
    assert status == osv.STATUS_FAILED
    assert b"timed out" in err
    assert elapsed < 0.5 + 0.3 + 1.5


def test_bad_address_is_an_error_not_a_traceback():
    status, _, err = run(("guest/../x", 8000), ["/hello.so"])
    assert status == osv.STATUS_FAILED
    assert err.startswith(b"vtorque: osv: bad OSv guest address")


# ---------------------------------------------------------------- the command line itself

def test_command_line_format():
    line = osv.build_command_line(["/x.so", 'a "b"', "c\\d"], TOKEN)
    assert line == (f'"/usr/lib/vtorque-launch.so" "{TOKEN}" "/x.so" "a \\"b\\"" "c\\\\d"')


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                               blacklist_characters=";&!$")),
                min_size=1))
def test_quoted_words_survive_osv_grammar(words):
    ok, commands = parse_command_line(osv.build_command_line(words, TOKEN), {})
    assert ok
    assert commands == [[osv.LAUNCHER, TOKEN, *words, ""]]


def test_status_line_parsing():
    assert osv.parse_status(osv.status_line(TOKEN, 7).encode(), TOKEN) == 7
    assert osv.parse_status(osv.status_line(OTHER, 7).encode(), TOKEN) is None
    assert osv.parse_status(f"vtorque-exit {TOKEN} 7".encode(), TOKEN) is None
    assert osv.parse_status(f"vtorque-exit {TOKEN} x\n".encode(), TOKEN) is None


# -------------------------------------------------- the stand-in against the API listings

def test_standin_answers_like_the_listings(guest):
    code, body = raw(guest, "PUT", "/app/", {"command": "/hello.so;"})
    assert code == 400
    assert json.loads(body) == {
        "message": "The use of ; is not allowed, use & for multiple commands", "code": 400}
    code, body = raw(guest, "PUT", "/app/", {"command": "& /hello.so"})
    assert (code, json.loads(body)["message"]) == (400, "Bad formatted command")
    code, body = raw(guest, "PUT", "/app/?command=" + urllib.parse.quote(
        "/sleep.so 0.2 & /hello.so"))
    assert code == 200
    tids = json.loads(body).split()
    assert len(tids) == 2
    assert raw(guest, "GET", f"/app/finished?tid={tids[0]}") == (200, b'"0"')
    assert raw(guest, "GET", "/app/finished?tid=999999") == (200, b'"1"')
    assert raw(guest, "GET", "/app/finished?tid=abc")[0] == 500
    assert raw(guest, "GET", "/file/etc/nothing?op=GET")[0] == 404
    assert raw(guest, "GET", "/file/tmp/../etc?op=GET")[0] == 400
    assert raw(guest, "GET", "/os/version")[0] == 200
    assert raw(guest, "POST", "/env/FOO?val=a+b")[0] == 200
    assert "FOO=a b" in json.loads(raw(guest, "GET", "/env/")[1])
