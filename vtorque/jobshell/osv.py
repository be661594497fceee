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
import re
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO

from vtorque.errors import CommandRefused, GuestGone, OsvError, OsvHttpError, VtorqueError
from vtorque.jobshell.osv_api import Api, error_detail, json_string

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
# Outside quotes these end a command (`;` is then refused by OSv, `&`/`!` start another
# program); `$` is expanded by OSv even inside quotes and cannot be escaped.
_REFUSED = set(";&!$")


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


# --------------------------------------------------------------------------- the run

class _ChunkReader:
    """Copies one output stream (stdout.<n> or stderr.<n>) to a local stream."""

    def __init__(self, api: Api, directory: str, name: str, sink: BinaryIO):
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
                                   f"{code}: {error_detail(body)}", code, error_detail(body))
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
    api = Api(address, port, http_timeout=http_timeout, grace=grace, poll=poll,
               clock=clock, sleep=sleep)
    start = clock()

    # Up and answering? (Retried within the grace period: the guest may still be booting.)
    api.checked("GET", "/os/version", "reading the OS version")
    for name, value in (env or {}).items():
        if value:
            api.checked("POST", f"/env/{name}", f"setting {name}", query={"val": value})
        else:
            # OSv refuses an empty value (POST /env/NAME?val= is HTTP 400 "Missing
            # mandatory parameter 'val'"): the variable is unset instead, so that a value
            # an earlier job left in the guest's one environment does not show through.
            api.checked("DELETE", f"/env/{name}", f"unsetting {name}")

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
    tids = json_string(body).split()
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
            reply = json_string(api.checked("GET", "/app/finished",
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
