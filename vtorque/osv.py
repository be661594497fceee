"""Running a job's command in an OSv guest through OSv's REST API.

OSv guests have no sshd and no cloud-init: the only way in is the httpserver-api module
(port 8000). Its API can start a program (PUT /app/, which returns the program's main
thread id) and tell whether that thread still runs (GET /app/finished); it has no
endpoint for the program's exit code and none for its console output. vTorque therefore
lost every OSv exit status. vtorque closes the gap with a small launcher that OSv images
must contain (the contract is in docs/osv.md and summed up here):

    PUT /app/  command="/usr/lib/vtorque-launch.so" "<token>" "<program>" "<arg>"...

The launcher runs the program in the guest, sends its stdout and stderr into files under
/tmp/vtorque-<token>/ (`stdout.<n>` and `stderr.<n>`: chunks of exactly CHUNK_BYTES bytes,
numbered from 0 with no padding, the last one shorter), and when the program has returned
and the last chunks are closed, it writes `/tmp/vtorque-<token>/status` holding exactly
`vtorque-exit <token> <status>\\n`. The host reads all of these with
GET /file/<path>?op=GET, which every image with httpserver-api serves.

Why files and not the serial console: the console log on the host belongs to root (the
job's shell runs as the job owner), carries OSv's own boot and debug messages mixed with
the program's, merges stdout with stderr, goes through a 115200-baud serial port and is
rotated by virtlogd. Why chunks: GET /file/ always returns the whole file (OSv's file
handler ignores the listed `offset`/`length` parameters), so one growing file would be
sent again and again; a full chunk is read once and then deleted (DELETE op=DELETE), which
also keeps the guest's RAM-backed /tmp small.

Why the token: it is a fresh random value per run; a status (or output) left by any other
run has another path and another token inside, and is never taken for this run's.

Command lines go through OSv's own command-line parser (core/commands.cc): `;`, `&` and
`!` end a command outside quotes, and `$` expands an environment variable everywhere,
even inside quotes. Every word is sent double-quoted (with `\\` and `"` escaped); words
holding `;`, `&`, `!`, `$` or anything but printable ASCII are refused before any request.

Every HTTP call has a timeout; a guest that stops answering (connection refused, reset or
timed out) for longer than `grace` seconds ends the job with a clear message and status
STATUS_FAILED. PUT /app/ is never sent twice unless the first attempt was refused before
any byte reached the guest: a program must not run twice.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import secrets
import shlex
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from vtorque.errors import NodeError, UserError, VtorqueError

PORT = 8000
LAUNCHER = "/usr/lib/vtorque-launch.so"
RUN_DIR_PREFIX = "/tmp/vtorque-"
CHUNK_BYTES = 65536
STREAMS = ("stdout", "stderr")
STATUS_FILE = "status"
# What run_job returns when vtorque, not the program, failed (as ssh does).
STATUS_FAILED = 255
# Once OSv says the program finished, how long the status file may take to appear.
FINISH_GRACE = 3.0

_TOKEN = re.compile(r"[0-9a-f]{32}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
# Outside quotes these end a command (`;` is then refused by OSv, `&`/`!` start another
# program); `$` is expanded by OSv even inside quotes and cannot be escaped.
_REFUSED = set(";&!$")


class OsvError(NodeError):
    """The OSv guest or its REST API failed; the program's own status is unknown."""


class GuestGone(OsvError):
    """The guest stopped answering for longer than the grace period."""


class OsvHttpError(OsvError):
    """The REST API answered with an HTTP error status."""

    def __init__(self, message: str, code: int, detail: str):
        super().__init__(message)
        self.code = code
        self.detail = detail


class CommandRefused(UserError):
    """The command cannot be passed through OSv's command-line parser unchanged."""


# ---------------------------------------------------------------------------- commands

def new_token() -> str:
    return secrets.token_hex(16)


def run_dir(token: str) -> str:
    return RUN_DIR_PREFIX + token


def status_line(token: str, status: int) -> str:
    """The exact content of the status file the launcher writes."""
    return f"vtorque-exit {token} {status}\n"


def split_command(command: Sequence[str] | str) -> list[str]:
    """argv from a list of words, or from one string split like a POSIX shell would split
    it (quotes only: nothing is expanded or executed)."""
    if isinstance(command, str):
        try:
            words = shlex.split(command, comments=False, posix=True)
        except ValueError as exc:
            raise CommandRefused(f"cannot split the OSv command {command!r}: {exc}") from None
    else:
        words = [str(w) for w in command]
    if not words or not words[0]:
        raise CommandRefused("empty OSv command")
    return words


def quote_word(word: str) -> str:
    """One word for OSv's command-line parser: double-quoted, `\\` and `"` escaped.
    Raises CommandRefused for words the parser would split or expand."""
    bad = sorted({c for c in word if c in _REFUSED or not " " <= c <= "~"})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise CommandRefused(
            f"OSv command word {word!r} contains {shown}: OSv's command-line parser would "
            "split or expand it (`;` `&` `!` separate commands, `$` expands a variable) and "
            "only printable ASCII is passed unchanged")
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_command_line(argv: Sequence[str], token: str, launcher: str = LAUNCHER) -> str:
    """The command line PUT /app/ gets: the launcher, the token, then the program."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("token must be 32 lowercase hex digits")
    return " ".join(quote_word(w) for w in [launcher, token, *argv])


def parse_status(body: bytes, token: str) -> int | None:
    """The status from a status file's content, or None when it is not (yet) a complete
    line for this token: partial writes and other runs' files never count."""
    match = re.fullmatch(rb"vtorque-exit ([0-9a-f]{32}) (-?[0-9]{1,10})\n", body)
    if not match or match.group(1).decode() != token:
        return None
    return int(match.group(2))


def batch_status(status: int) -> int:
    """The program's status as the batch system can carry it (0-255); others become 255."""
    return status if 0 <= status <= 255 else 255


# -------------------------------------------------------------------------------- HTTP

def _base_url(address: str, port: int) -> str:
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad port {port!r}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        if not _HOST.fullmatch(address):
            raise OsvError(f"bad OSv guest address {address!r}") from None
        return f"http://{address}:{port}"
    return f"http://[{ip}]:{port}" if ip.version == 6 else f"http://{ip}:{port}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text)


def _refused(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, ConnectionRefusedError)
    return isinstance(exc, ConnectionRefusedError)


def _json_string(body: bytes) -> str:
    """The value of a JSON string reply ("242" with the quotes); tolerant of bare text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text.strip('"')
    return value if isinstance(value, str) else str(value)


def _error_detail(body: bytes) -> str:
    """The message of OSv's json_exception body ({"message": ..., "code": ...})."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return value["message"]
    text = re.sub(r"<[^>]*>", " ", text)
    return " ".join(text.split())[:200]


class _Api:
    """HTTP calls to one guest, with a timeout each and the guest-gone rule."""

    def __init__(self, address: str, port: int, *, http_timeout: float, grace: float,
                 poll: float, clock: Callable[[], float], sleep: Callable[[float], None]):
        self.base = _base_url(address, port)
        self.where = self.base[len("http://"):]
        self.port = port
        self.http_timeout = http_timeout
        self.grace = grace
        self.poll = poll
        self.clock = clock
        self.sleep = sleep
        self.last_ok = clock()
        # No proxies: $http_proxy must never route a job's traffic to the guest elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path: str, query: Mapping[str, str] | None = None) -> str:
        url = self.base + urllib.parse.quote(path, safe="/-_.~")
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return url

    def once(self, method: str, path: str, query: Mapping[str, str] | None = None,
             form: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """One request; HTTP error statuses are returned, transport failures raised."""
        data = None
        headers = {"Accept": "application/json"}
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.url(path, query), data=data, method=method,
                                         headers=headers)
        try:
            with self._opener.open(request, timeout=self.http_timeout) as reply:
                body = reply.read()
                code = reply.status
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                exc.close()
            code = exc.code
        self.last_ok = self.clock()
        return code, body

    def call(self, method: str, path: str, query: Mapping[str, str] | None = None,
             form: Mapping[str, str] | None = None, *, retry: str = "always"
             ) -> tuple[int, bytes]:
        """A request retried (retry="always": idempotent calls; "refused": only when the
        connection was refused, so nothing reached the guest) until the guest has not
        answered for `grace` seconds; then GuestGone."""
        while True:
            try:
                return self.once(method, path, query, form)
            except (OSError, http.client.HTTPException) as exc:
                reason = _reason(exc)
                if retry == "never" or (retry == "refused" and not _refused(exc)):
                    raise OsvError(f"OSv guest {self.where}: {method} {path} failed "
                                   f"({reason})") from None
                silent = self.clock() - self.last_ok
                if silent >= self.grace:
                    raise GuestGone(f"OSv guest {self.where} did not answer for "
                                    f"{silent:.1f} s ({reason}): the guest is down or its "
                                    f"REST API (httpserver-api, port {self.port}) is not "
                                    "running") from None
                self.sleep(min(self.poll, max(0.0, self.grace - silent)))

    def checked(self, method: str, path: str, what: str, **kwargs) -> bytes:
        code, body = self.call(method, path, **kwargs)
        if code != 200:
            detail = _error_detail(body)
            raise OsvHttpError(f"OSv guest {self.where}: {what}: HTTP {code}"
                               + (f": {detail}" if detail else ""), code, detail)
        return body


# --------------------------------------------------------------------------- the run

class _ChunkReader:
    """Copies one output stream (stdout.<n> or stderr.<n>) to a local stream."""

    def __init__(self, api: _Api, directory: str, name: str, sink: BinaryIO):
        self.api = api
        self.prefix = f"{directory}/{name}."
        self.sink = sink
        self.index = 0
        self.seen = 0

    def pump(self) -> None:
        """Copy every byte that arrived since the last call."""
        while True:
            path = f"{self.prefix}{self.index}"
            code, body = self.api.call("GET", "/file" + path, {"op": "GET"})
            if code == 404:
                return
            if code != 200:
                raise OsvHttpError(f"OSv guest {self.api.where}: reading {path}: HTTP "
                                   f"{code}: {_error_detail(body)}", code, _error_detail(body))
            if len(body) > self.seen:
                self.sink.write(body[self.seen:])
                self.sink.flush()
                self.seen = len(body)
            if len(body) < CHUNK_BYTES:
                return
            # A full chunk is complete: the launcher has moved on to the next one.
            try:
                self.api.once("DELETE", "/file" + path, {"op": "DELETE"})
            except (OSError, http.client.HTTPException):
                pass    # only frees guest memory; the next read notices a dead guest
            self.index += 1
            self.seen = 0


def execute(address: str, command: Sequence[str] | str, *, port: int = PORT,
            timeout: float | None = None, poll: float = 0.5, http_timeout: float = 10.0,
            grace: float = 30.0, env: Mapping[str, str] | None = None,
            token: str | None = None, launcher: str = LAUNCHER,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
            clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> int:
    """Run `command` in the OSv guest at `address` and return its exit status (0-255).

    Raises CommandRefused (before any request) for commands OSv's parser would change,
    OsvError (GuestGone, OsvHttpError) when the guest or its API fails, and OsvError when
    `timeout` (seconds for the whole run; None: no limit) passes first.
    """
    argv = split_command(command)
    token = token or new_token()
    line = build_command_line(argv, token, launcher)
    for name in env or {}:
        if not _ENV_NAME.fullmatch(name):
            raise CommandRefused(f"bad environment variable name {name!r}")
    if poll <= 0 or http_timeout <= 0 or grace < 0:
        raise ValueError("poll and http_timeout must be positive, grace not negative")
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    api = _Api(address, port, http_timeout=http_timeout, grace=grace, poll=poll,
               clock=clock, sleep=sleep)
    start = clock()

    # Up and answering? (Retried within the grace period: the guest may still be booting.)
    api.checked("GET", "/os/version", "reading the OS version")
    for name, value in (env or {}).items():
        api.checked("POST", f"/env/{name}", f"setting {name}", query={"val": value})

    try:
        body = api.checked("PUT", "/app/", "starting the command", form={"command": line},
                           retry="refused")
    except GuestGone:
        raise
    except OsvHttpError as exc:
        if launcher in exc.detail:
            raise OsvHttpError(f"{exc}: does the image contain the vtorque launcher "
                               f"{launcher} (see docs/osv.md)?", exc.code, exc.detail
                               ) from None
        raise
    except OsvError as exc:
        # Sent, but no reply: it may run. Never sent again, so it cannot run twice.
        raise OsvError(f"{exc}: the command may have started; not retried so that it "
                       "cannot run twice") from None
    tids = _json_string(body).split()
    if len(tids) != 1 or not tids[0].isdigit():
        raise OsvError(f"OSv guest {api.where}: unexpected reply to PUT /app/: "
                       f"{body[:100]!r}")
    tid = tids[0]

    directory = run_dir(token)
    sinks = {"stdout": out, "stderr": err}
    readers = [_ChunkReader(api, directory, name, sinks[name]) for name in STREAMS]
    status_path = f"{directory}/{STATUS_FILE}"
    finished_at: float | None = None
    while True:
        for reader in readers:
            reader.pump()
        code, body = api.call("GET", "/file" + status_path, {"op": "GET"})
        status = parse_status(body, token) if code == 200 else None
        if status is not None:
            # The launcher closed the output before writing the status: drain it.
            for reader in readers:
                reader.pump()
            return batch_status(status)
        now = clock()
        if finished_at is None:
            reply = _json_string(api.checked("GET", "/app/finished",
                                             "asking whether the command finished",
                                             query={"tid": tid}))
            if reply == "1":
                finished_at = now
            elif reply != "0":
                raise OsvError(f"OSv guest {api.where}: unexpected reply to "
                               f"GET /app/finished: {reply[:50]!r}")
        elif now - finished_at >= max(FINISH_GRACE, 2 * poll):
            for reader in readers:
                reader.pump()
            raise OsvError(
                f"OSv guest {api.where}: the command finished but left no exit status in "
                f"{status_path}: does the image contain the vtorque launcher {launcher} "
                "(see docs/osv.md)?")
        if timeout is not None and now - start >= timeout:
            raise OsvError(f"OSv guest {api.where}: the command did not finish within "
                           f"{timeout:g} s")
        sleep(poll)


def run_job(address: str, command: Sequence[str] | str, *, port: int = PORT,
            timeout: float | None = None, poll: float = 0.5, http_timeout: float = 10.0,
            grace: float = 30.0, env: Mapping[str, str] | None = None,
            token: str | None = None, launcher: str = LAUNCHER,
            stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> int:
    """Run `command` in OSv guest rank 0 as a job: the program's output goes to `stdout`
    and `stderr` (default: ours) as it arrives; returns its exit status. When vtorque or
    the guest fails instead, prints one line `vtorque: osv: ...` to `stderr` and returns
    STATUS_FAILED (255). Never raises for guest, network or command problems."""
    err = stderr if stderr is not None else sys.stderr.buffer
    try:
        return execute(address, command, port=port, timeout=timeout, poll=poll,
                       http_timeout=http_timeout, grace=grace, env=env, token=token,
                       launcher=launcher, stdout=stdout, stderr=err)
    except (VtorqueError, ValueError, OSError) as exc:
        # OSError: only our own output streams can raise it here (HTTP errors are caught
        # and retried or turned into OsvError inside).
        try:
            err.write(f"vtorque: osv: {exc}\n".encode(errors="replace"))
            err.flush()
        except (OSError, ValueError):
            pass
        return STATUS_FAILED
