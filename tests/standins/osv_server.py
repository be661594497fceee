"""A stand-in for an OSv guest's REST API (STAND-IN CODE for tests; not OSv).

Unit tests cannot boot a guest for every case (a real one takes seconds under TCG), so this
imitates, on 127.0.0.1 and an ephemeral port, what an OSv guest with the httpserver-api
module and the vtorque launcher (docs/osv.md) answers. Everything here was written from
OSv's published API description and source, then checked against a real OSv guest
(vtorque's image from scripts/build-osv-image, booted by scripts/osv/check-osv-image):

- the Swagger 1.2 listings modules/httpserver-api/api-doc/listings/{app,os,env,file}.json
  of cloudius-systems/osv (saved verbatim in reference/samples/osv-api-*.json);
- modules/httpserver-api/api/app.cc (PUT /app/ and GET /app/finished), api/file.cc and
  handlers.cc (GET /file/<path>?op=GET returns the whole file raw; offset/length are
  listed but not read; a missing file is a 404), api/env.cc, request_handler.cc (params
  from an x-www-form-urlencoded body and from the query; paths with ".." are a 400;
  '+' decodes to a space), core/commands.cc (the command-line grammar and the `$`
  expansion), core/app.cc ("program %s returned %d" in the debug buffer);
- reference/samples/osv-api-notes.md for the JSON string replies and the
  {"message": ..., "code": ...} error bodies.

Programs are not ELF objects but a small allow-list of fake programs written in Python
(PROGRAMS below). The launcher at LAUNCHER implements vtorque's launcher contract the way
a real image's launcher must (independently of vtorque/osv.py, so the tests check the
contract, not a shared helper):

    <launcher> <token> <program> [<arg>...]
      - output of the program: /tmp/vtorque-<token>/stdout.<n> and stderr.<n>, chunks of
        exactly 65536 bytes (n from 0, no padding), created when their first byte is
        written; a chunk is closed before the next one is created;
      - after the program returned and both streams are closed: `status.tmp` holding
        `vtorque-exit <token> <status>\\n`, renamed to `status`; the same line on the
        console.
      - program not found: a message on stderr.<n>, status 127.

The guest's file system is a directory on the host (`root`). /crash.so makes the guest
"die": the server stops and its port refuses connections, as a powered-off guest would.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LAUNCHER = "/usr/lib/vtorque-launch.so"
CHUNK = 65536
VERSION = "v0.57.0-vtorque-standin"
_TOKEN = re.compile(r"[0-9a-f]{32}")
_SPACES = " \t\n\r\f\v"
# core/commands.cc: unesc_char
_UNESC = {"\\a": "\a", "\\b": "\b", "\\f": "\f", "\\n": "\n", "\\r": "\r", "\\t": "\t",
          "\\v": "\v", "\\\\": "\\", "\\'": "'", '\\"': '"'}


class GuestDied(Exception):
    """Unwinds a program when the guest goes away."""


class HttpError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------- OSv's command-line parser

def _word(line: str, i: int) -> tuple[str | None, int]:
    """quoted_string | string of core/commands.cc, at position i."""
    n = len(line)
    if i < n and line[i] == '"':
        out, j = [], i + 1
        while j < n and line[j] != '"':
            if line[j:j + 2] in _UNESC:
                out.append(_UNESC[line[j:j + 2]])
                j += 2
            else:
                out.append(line[j])
                j += 1
        if j < n:
            return "".join(out), j + 1
    out, j = [], i
    while j < n:
        if line[j:j + 2] in _UNESC:
            out.append(_UNESC[line[j:j + 2]])
            j += 2
        elif line[j] in " ;&!" or ord(line[j]) > 127:
            break
        else:
            out.append(line[j])
            j += 1
    return ("".join(out), j) if out else (None, i)


def parse_command_line(line: str, env: dict[str, str]) -> tuple[bool, list[list[str]]]:
    """osv::parse_command_line: commands, each ending with its terminator (";", "&",
    "&!", "!" or "" at the end of input); like Spirit's phrase_parse, unparsed trailing
    input is ignored and ok is false only when no command parses at all."""
    if all(c in _SPACES + ";" for c in line):
        return True, []
    n, i, commands = len(line), 0, []
    while True:
        while i < n and line[i] in _SPACES:
            i += 1
        words: list[str] = []
        j = i
        while True:
            word, k = _word(line, j)
            if word is None:
                break
            words.append(word)
            j = k
            while j < n and line[j] in _SPACES:
                j += 1
        if not words:
            break
        if line.startswith("&!", j):
            term, j = "&!", j + 2
        elif j < n and line[j] in ";&!":
            term, j = line[j], j + 1
        elif j >= n:
            term = ""
        else:
            break
        commands.append(words + [term])
        i = j
        if term == "":
            break
    # expand_environ_vars: everything after the first $ names a variable
    for command in commands:
        for index, word in enumerate(command):
            if "$" in word:
                head, name = word.split("$", 1)
                command[index] = head + env.get(name, "")
    return bool(commands), commands


# ----------------------------------------------------------------------- fake programs

def chatter_bytes(total: int) -> bytes:
    """What `/chatter.so <total>` writes to stdout (for tests to compare with)."""
    lines, size, k = [], 0, 0
    while size < total:
        line = f"chatter line {k:07d} of the OSv stand-in\n".encode()
        lines.append(line)
        size += len(line)
        k += 1
    return b"".join(lines)[:total]


def _hello(guest: OsvStandin, argv, out, err) -> int:
    out(b"Hello from the OSv stand-in\n")
    return 0


def _echo(guest: OsvStandin, argv, out, err) -> int:
    for arg in argv[1:]:
        out(arg.encode() + b"\n")
    return 0


def _fail(guest: OsvStandin, argv, out, err) -> int:
    status = int(argv[1]) if len(argv) > 1 else 1
    if len(argv) > 2 and guest.dead.wait(float(argv[2])):
        raise GuestDied()
    err(f"fail.so: exiting with status {status}\n".encode())
    return status


def _sleep(guest: OsvStandin, argv, out, err) -> int:
    if guest.dead.wait(float(argv[1]) if len(argv) > 1 else 1.0):
        raise GuestDied()
    return 0


def _crash(guest: OsvStandin, argv, out, err) -> int:
    out(b"about to crash\n")
    if not guest.dead.wait(float(argv[1]) if len(argv) > 1 else 0.3):
        guest.crash()
    raise GuestDied()


def _chatter(guest: OsvStandin, argv, out, err) -> int:
    data = chatter_bytes(int(argv[1]))
    for start in range(0, len(data), 10000):
        if guest.dead.is_set():
            raise GuestDied()
        out(data[start:start + 10000])
        time.sleep(0.002)
    err(b"chatter done\n")
    return 0


def _env(guest: OsvStandin, argv, out, err) -> int:
    with guest.lock:
        value = guest.env.get(argv[1]) if len(argv) > 1 else None
    out((value if value is not None else "<unset>").encode() + b"\n")
    return 0


PROGRAMS: dict[str, Callable[..., int]] = {
    "/hello.so": _hello,          # one line on stdout, status 0
    "/echo.so": _echo,            # each argument on its own line
    "/fail.so": _fail,            # /fail.so N [DELAY]: a line on stderr, status N
    "/sleep.so": _sleep,          # /sleep.so SECONDS
    "/crash.so": _crash,          # /crash.so [DELAY]: a line, then the guest dies
    "/chatter.so": _chatter,      # /chatter.so BYTES: that much stdout, in pieces
    "/env.so": _env,              # /env.so NAME: the variable's value
}


class _Chunks:
    """The launcher's writer of one stream: <dir>/<name>.<n>, CHUNK bytes each."""

    def __init__(self, directory: str, name: str):
        self.directory = directory
        self.name = name
        self.index = 0
        self.used = 0
        self.handle = None
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            while data:
                if self.handle is None:
                    path = os.path.join(self.directory, f"{self.name}.{self.index}")
                    self.handle = open(path, "wb", buffering=0)
                piece = data[:CHUNK - self.used]
                self.handle.write(piece)
                self.used += len(piece)
                data = data[len(piece):]
                if self.used == CHUNK:
                    self.handle.close()
                    self.handle = None
                    self.index += 1
                    self.used = 0

    def close(self) -> None:
        with self.lock:
            if self.handle is not None:
                self.handle.close()
                self.handle = None


# ------------------------------------------------------------------------------ guest

class OsvStandin:
    """One fake OSv guest: `with OsvStandin(root) as guest: ... guest.port ...`."""

    def __init__(self, root: str, *, launcher_installed: bool = True):
        self.root = os.path.realpath(root)
        os.makedirs(os.path.join(self.root, "tmp"), exist_ok=True)
        self.launcher_installed = launcher_installed
        self.lock = threading.Lock()
        self.dead = threading.Event()
        self.env: dict[str, str] = {"OSV_VERSION": VERSION, "OSV_CPUS": "1",
                                    "OSV_IP": "10.0.2.15"}
        self.hostname = "osv.local"
        self.console = bytearray()
        self.dmesg = bytearray()
        self.requests: list[tuple[str, str]] = []
        self.apps: dict[int, threading.Thread] = {}
        self._next_tid = 242
        self._injected: list[list] = []
        self._delays: list[list] = []
        self._booted = time.monotonic()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle
    def start(self) -> OsvStandin:
        guest = self

        class Handler(_Handler):
            standin = guest

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        return "127.0.0.1"

    def crash(self) -> None:
        """The guest dies: no more answers, the port refuses connections."""
        self.dead.set()
        server = self._server
        if server is not None:
            # shutdown() waits for serve_forever: never call it from a handler's thread.
            threading.Thread(target=self._close, args=(server,), daemon=True).start()

    def _close(self, server: ThreadingHTTPServer) -> None:
        server.shutdown()
        server.server_close()

    def stop(self) -> None:
        self.dead.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> OsvStandin:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- test helpers
    def plant(self, path: str, data: bytes) -> None:
        """A file in the guest's file system before the run (e.g. a stale status)."""
        real = self.real_path(path)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        with open(real, "wb") as handle:
            handle.write(data)

    def inject_error(self, method: str, path: str, code: int, message: str,
                     times: int = 1) -> None:
        """The next `times` requests `method path` get this json_exception instead."""
        with self.lock:
            self._injected.append([method, path, code, message, times])

    def inject_delay(self, method: str, path: str, seconds: float, times: int = 1) -> None:
        """The next `times` requests `method path` are answered `seconds` late (a guest
        too busy to answer in time); the request itself still takes effect."""
        with self.lock:
            self._delays.append([method, path, seconds, times])

    def requests_for(self, method: str, prefix: str = "") -> list[str]:
        with self.lock:
            return [p for m, p in self.requests if m == method and p.startswith(prefix)]

    def real_path(self, path: str) -> str:
        real = os.path.realpath(os.path.join(self.root, path.lstrip("/")))
        if real != self.root and not real.startswith(self.root + os.sep):
            raise HttpError(400, f"Error opening: '{path}'")
        return real

    def _print(self, data: bytes) -> None:
        with self.lock:
            self.console += data

    # -- PUT /app/ (api/app.cc exec_app)
    def run_app(self, line: str) -> str:
        with self.lock:
            env = dict(self.env)
        ok, commands = parse_command_line(line, env)
        if not ok:
            raise HttpError(400, "Bad formatted command")
        for command in commands:
            if command[-1] == ";":
                raise HttpError(400, "The use of ; is not allowed, use & for multiple "
                                     "commands")
        tids = []
        for command in commands:
            argv = command[:-1]
            program = argv[0]
            if not ((program == LAUNCHER and self.launcher_installed)
                    or program in PROGRAMS):
                # osv::launch_error, caught by the generic handler: HTTP 500
                raise HttpError(500, f"Failed to load object: {program}")
            with self.lock:
                tid = self._next_tid
                self._next_tid += 1
                thread = threading.Thread(target=self._app_main, args=(argv,), daemon=True,
                                          name=f"osv-app-{tid}")
                self.apps[tid] = thread
            thread.start()
            tids.append(str(tid))
        return " ".join(tids)

    def _app_main(self, argv: list[str]) -> None:
        try:
            if argv[0] == LAUNCHER:
                status = self._launcher(argv[1:])
            else:
                status = PROGRAMS[argv[0]](self, argv, self._print, self._print)
        except GuestDied:
            return
        if status:
            with self.lock:
                self.dmesg += f"program {argv[0]} returned {status}\n".encode()

    def _launcher(self, args: list[str]) -> int:
        if len(args) < 2 or not _TOKEN.fullmatch(args[0]):
            self._print(b"vtorque-launch: usage: vtorque-launch.so <token> <program> "
                        b"[<arg>...]\n")
            return 125
        token, argv = args[0], args[1:]
        directory = self.real_path(f"/tmp/vtorque-{token}")
        os.makedirs(directory, exist_ok=True)
        out, err = _Chunks(directory, "stdout"), _Chunks(directory, "stderr")
        program = PROGRAMS.get(argv[0])
        if program is None:
            err.write(f"vtorque-launch: {argv[0]}: Failed to load object: {argv[0]}\n"
                      .encode())
            status = 127
        else:
            status = program(self, argv, out.write, err.write)   # GuestDied: no status
        out.close()
        err.close()
        line = f"vtorque-exit {token} {status}\n".encode()
        tmp = os.path.join(directory, "status.tmp")
        with open(tmp, "wb") as handle:
            handle.write(line)
        os.replace(tmp, os.path.join(directory, "status"))
        self._print(line)
        return status

    # -- GET /app/finished (api/app.cc finished_app)
    def finished(self, tid_text: str) -> str:
        match = re.match(r"\s*([+-]?\d+)", tid_text)     # std::stol
        if not match:
            raise HttpError(500, "stol")
        with self.lock:
            thread = self.apps.get(int(match.group(1)))
        return "0" if thread is not None and thread.is_alive() else "1"

    def file_get(self, path: str, op: str) -> tuple[bytes, str]:
        if not op:
            raise HttpError(400, "Missing mandatory parameter 'op'")
        real = self.real_path(path)
        if op == "GET":
            if os.path.isdir(real):
                return b"", ""          # a real guest answers 200 with an empty body
            try:
                with open(real, "rb") as handle:
                    return handle.read(), _mime(path)
            except OSError:
                raise HttpError(404, "Page not found") from None
        if op == "GETFILESTATUS":
            try:
                st = os.stat(real)
            except FileNotFoundError:
                raise HttpError(404, f"Not found: '{path}'") from None
            status = {"accessTime": int(st.st_atime), "blockSize": 512, "group": "osv",
                      "length": st.st_size, "modificationTime": int(st.st_mtime),
                      "owner": "osv", "pathSuffix": os.path.basename(path),
                      "permission": "777", "replication": 0,
                      "type": "DIRECTORY" if os.path.isdir(real) else "FILE"}
            return json.dumps(status).encode(), "application/json"
        raise HttpError(400, f"Bad op parameter {op}")

    def file_delete(self, path: str, op: str) -> None:
        if not op:
            raise HttpError(400, "Missing mandatory parameter 'op'")
        if op != "DELETE":
            raise HttpError(400, f"Bad op parameter {op}")
        real = self.real_path(path)
        try:
            if os.path.isdir(real):
                os.rmdir(real)
            else:
                os.unlink(real)
        except FileNotFoundError:
            raise HttpError(404, f"Not found: '{path}'") from None
        except OSError as exc:
            raise HttpError(400, f"Failed deleting {exc}") from None


def _mime(path: str) -> str:
    ext = os.path.splitext(path)[1]
    return {".json": "application/json", ".html": "text/html"}.get(ext, "text/plain")


class _Handler(BaseHTTPRequestHandler):
    standin: OsvStandin
    protocol_version = "HTTP/1.0"
    server_version = "OSv-standin"

    def log_message(self, format, *args) -> None:   # noqa: A002 - quiet
        pass

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        pairs = []
        if self.headers.get("Content-Type", "").startswith(
                "application/x-www-form-urlencoded"):
            pairs += urllib.parse.parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        if "?" in self.path:
            pairs += urllib.parse.parse_qsl(self.path.split("?", 1)[1],
                                            keep_blank_values=True)
        for name, value in pairs:
            params.setdefault(name, value)      # the first one wins (find_in_vector)
        return params

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", ctype)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value) -> None:
        self._send(200, json.dumps(value).encode())

    def _handle(self, method: str) -> None:
        guest = self.standin
        if guest.dead.is_set():
            self.close_connection = True
            return
        with guest.lock:
            guest.requests.append((method, self.path))
        path = urllib.parse.unquote_plus(self.path.split("?", 1)[0])
        if ".." in path or not path.startswith("/"):
            self._send(400, b"<html><head><title>Bad Request</title></head>"
                            b"<body><h1>400 Bad Request</h1></body></html>", "text/html")
            return
        params = self._params()
        delay = 0.0
        with guest.lock:
            for rule in guest._delays:
                if rule[0] == method and rule[1] == path and rule[3] > 0:
                    rule[3] -= 1
                    delay = rule[2]
        if delay:
            time.sleep(delay)
        try:
            with guest.lock:
                for rule in guest._injected:
                    if rule[0] == method and rule[1] == path and rule[4] > 0:
                        rule[4] -= 1
                        raise HttpError(rule[2], rule[3])
            self._route(method, path, params)
        except HttpError as exc:
            self._send(exc.code, json.dumps({"message": exc.message, "code": exc.code})
                       .encode())
        except (ValueError, OSError) as exc:
            self._send(500, json.dumps({"message": str(exc), "code": 500}).encode())

    def _route(self, method: str, path: str, params: dict[str, str]) -> None:
        guest = self.standin
        if path == "/app/" and method == "PUT":
            if not params.get("command"):
                raise HttpError(400, "Missing mandatory parameter 'command'")
            self._json(guest.run_app(params["command"]))
        elif path == "/app/finished" and method == "GET":
            self._json(guest.finished(params.get("tid", "")))
        elif path == "/os/version" and method == "GET":
            self._json(VERSION)
        elif path == "/os/uptime" and method == "GET":
            self._json(int(time.monotonic() - guest._booted))
        elif path == "/os/poweroff" and method == "POST":
            # A real guest drops the connection without an answer and is gone.
            guest.crash()
            self.close_connection = True
        elif path == "/os/hostname" and method == "GET":
            with guest.lock:
                self._json(guest.hostname)
        elif path == "/os/hostname" and method == "POST":
            with guest.lock:
                guest.hostname = params.get("name", "")
            self._json("")
        elif path == "/os/dmesg" and method == "GET":
            with guest.lock:
                self._json(guest.dmesg.decode(errors="replace"))
        elif path == "/env/" and method == "GET":
            with guest.lock:
                self._json([f"{k}={v}" for k, v in guest.env.items()])
        elif path.startswith("/env/") and len(path) > len("/env/"):
            name = path[len("/env/"):]
            with guest.lock:
                if method == "GET":
                    if name not in guest.env:
                        raise HttpError(400, f"No environment variable {name}")
                    value = guest.env[name]
                elif method == "POST":
                    if "=" in name:
                        raise HttpError(400, f"invalid environment variable {name}")
                    if not params.get("val"):
                        # OSv cannot set an empty value: an empty val counts as missing.
                        raise HttpError(400, "Missing mandatory parameter 'val'")
                    guest.env[name] = params["val"]
                    value = ""
                elif method == "DELETE":
                    guest.env.pop(name, None)
                    value = ""
                else:
                    raise HttpError(405, "Method not allowed")
            self._json(value)
        elif path.startswith("/file/"):
            file_path = path[len("/file"):]
            if method == "GET":
                body, ctype = guest.file_get(file_path, params.get("op", ""))
                self._send(200, body, ctype)
            elif method == "DELETE":
                guest.file_delete(file_path, params.get("op", ""))
                self._send(200, b"")
            else:
                raise HttpError(405, "Method not allowed")
        else:
            raise HttpError(404, "Not found")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")
