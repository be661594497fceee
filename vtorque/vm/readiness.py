"""Waiting for guests to answer.

A guest is ready when its serial console prints `vtorque-ready <token>` with the token
the host gave it (kernel command line or cloud-init seed). libvirt's virtlogd writes the
console to a root-owned log in the job directory, so the signal needs no network, no
agent in the guest and no polling of ARP tables; the per-guest token means an old log or
another guest cannot be mistaken for this one.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence

from vtorque.errors import GuestError, GuestTimeout, HypervisorError
from vtorque.vm.spec import GuestSpec

POLL_SECONDS = 0.05
TAIL_BYTES = 600
# A guest whose setup failed says so on its console (the test guest's /init does) instead
# of printing its ready line: the host gives up at once rather than at the timeout.
ERROR_PREFIX = b"vtorque-error "


def console_has(path: str, line: str) -> bool:
    """Whether the console log holds `line` as a whole token: 'vtorque-ready ab' does not
    match a log saying 'vtorque-ready abcd' (another guest's or an older token)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return False
    pattern = re.escape(line.encode()) + rb"(?![A-Za-z0-9_-])"
    return re.search(pattern, data) is not None


def api_answers(url: str, timeout: float = 1.0) -> bool:
    """True when an HTTP GET of `url` succeeds (an OSv guest's REST API is up)."""
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as reply:
            return 200 <= reply.status < 300
    except (OSError, ValueError):
        return False


def osv_set_hostname(spec: GuestSpec, timeout: float = 10.0, attempts: int = 3) -> None:
    """Give a ready OSv guest its host name (POST /os/hostname?name=...; OSv takes none
    from its command line). GuestError when its REST API refuses."""
    import urllib.parse
    import urllib.request
    base = spec.ready_url.rsplit("/os/", 1)[0]
    url = f"{base}/os/hostname?" + urllib.parse.urlencode({"name": spec.hostname})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    reason = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.5 * attempt)
        try:
            with opener.open(urllib.request.Request(url, data=b"", method="POST"),
                             timeout=timeout) as reply:
                if 200 <= reply.status < 300:
                    return
                reason = f"HTTP {reply.status}"
        except OSError as exc:
            reason = str(getattr(exc, "reason", exc))[:120]
    raise GuestError(f"guest {spec.name}: setting its host name through OSv's REST API "
                     f"failed: {reason}")


def console_error(path: str) -> str | None:
    """The first `vtorque-error ...` line of a console log, if any."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    at = data.find(ERROR_PREFIX)
    if at < 0:
        return None
    line = data[at:].split(b"\n", 1)[0]
    return line.decode(errors="replace").strip()[:300]


def console_tail(path: str, lines: int = 3) -> str:
    """The last console lines, for error messages ('' when there is no log)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def wait_ready(specs: Sequence[GuestSpec], timeout: float,
               state_of: Callable[[str], str | None],
               clock: Callable[[], float] = time.monotonic,
               line_of: Callable[[GuestSpec], str] = lambda spec: spec.ready_line
               ) -> dict[str, float]:
    """Wait until every guest printed its ready line (`line_of`: another line, such as a
    snapshot template's); return seconds to ready per guest.

    Fails fast when a guest stops running; raises GuestTimeout naming the guests that did
    not answer (with their last console lines) once `timeout` has passed.
    """
    start = clock()
    pending = {spec.name: spec for spec in specs}
    ready: dict[str, float] = {}
    next_state_check = start
    while pending:
        for name, spec in list(pending.items()):
            if spec.ready_url and api_answers(spec.ready_url) or \
                    not spec.ready_url and console_has(spec.console_log, line_of(spec)):
                ready[name] = clock() - start
                del pending[name]
        if not pending:
            break
        now = clock()
        if now >= next_state_check:
            next_state_check = now + 0.5
            for name, spec in pending.items():
                error = None if spec.ready_url else console_error(spec.console_log)
                if error:
                    raise GuestError(f"guest {name} failed to set up: {error}")
                state = state_of(name)
                if state != "running":
                    tail = console_tail(spec.console_log)
                    raise HypervisorError(
                        f"guest {name} stopped before it was ready (state {state or 'gone'})"
                        + (f"; console: {tail}" if tail else ""))
        if now - start >= timeout:
            details = []
            for name, spec in sorted(pending.items()):
                tail = console_tail(spec.console_log)
                details.append(name + (f" (console: {tail})" if tail else " (no console output)"))
            raise GuestTimeout(f"{len(pending)} guest(s) did not answer within {timeout:g} s: "
                               + "; ".join(details))
        time.sleep(POLL_SECONDS)
    return ready
