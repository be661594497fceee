"""HTTP calls to one OSv guest's REST API (httpserver-api, port 8000): a timeout on every
call, no proxies, and the rule that a guest silent for longer than the grace period is
gone (GuestGone)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping

from vtorque.errors import GuestGone, OsvError, OsvHttpError

_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


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


def json_string(body: bytes) -> str:
    """The value of a JSON string reply ("242" with the quotes); tolerant of bare text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text.strip('"')
    return value if isinstance(value, str) else str(value)


def error_detail(body: bytes) -> str:
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


class Api:
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
            detail = error_detail(body)
            raise OsvHttpError(f"OSv guest {self.where}: {what}: HTTP {code}"
                               + (f": {detail}" if detail else ""), code, detail)
        return body
