"""Unit tests of vtorque.vm.readiness: waiting for each guest's ready line on its console log
(the logs are files the tests write themselves; no guest runs)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from vtorque.errors import GuestTimeout, HypervisorError, NodeError
from vtorque.vm import readiness
from vtorque.vm.readiness import console_has, console_tail, wait_ready


@pytest.fixture
def guests(make_specs, tmp_path: Path):
    """guests(n) -> n specs whose console logs live in tmp_path (not yet written)."""
    def make(count: int = 1):
        specs = make_specs("kernel", f"vms_per_node={count}")
        return [replace(s, console_log=str(tmp_path / f"{s.name}.console.log")) for s in specs]
    return make


def running(_name: str) -> str:
    return "running"


def write(path: str, text: str, mode: str = "a") -> None:
    with open(path, mode) as handle:
        handle.write(text)


def test_ready_immediately(guests) -> None:
    [spec] = guests()
    write(spec.console_log, f"[    0.1] booting\r\n{spec.ready_line}\r\n")
    calls = []
    ready = wait_ready([spec], timeout=5, state_of=lambda n: calls.append(n) or "running")
    assert list(ready) == [spec.name]
    assert 0 <= ready[spec.name] < 1
    assert calls == []  # ready before the state ever needed checking


def test_ready_after_a_delay(guests) -> None:
    specs = guests(2)
    write(specs[0].console_log, specs[0].ready_line + "\n")
    write(specs[1].console_log, "booting\n")

    def later() -> None:
        time.sleep(0.4)
        write(specs[1].console_log, f"login: {specs[1].ready_line}\n")

    thread = threading.Thread(target=later)
    thread.start()
    try:
        ready = wait_ready(specs, timeout=10, state_of=running)
    finally:
        thread.join()
    assert set(ready) == {specs[0].name, specs[1].name}
    assert ready[specs[0].name] < 0.3
    assert 0.35 <= ready[specs[1].name] < 5


def test_log_created_late(guests) -> None:
    [spec] = guests()
    timer = threading.Timer(0.3, write, (spec.console_log, spec.ready_line + "\n"))
    timer.start()
    try:
        ready = wait_ready([spec], timeout=10, state_of=running)
    finally:
        timer.join()
    assert ready[spec.name] >= 0.25


def test_timeout_names_the_guest_with_its_console_tail(guests) -> None:
    specs = guests(3)
    write(specs[0].console_log, specs[0].ready_line + "\n")
    write(specs[1].console_log, "line one\nline two\r\nline three\nKernel panic - not syncing\n")
    started = time.monotonic()
    with pytest.raises(GuestTimeout) as info:
        wait_ready(specs, timeout=0.4, state_of=running)
    assert 0.35 <= time.monotonic() - started < 5
    message = str(info.value)
    assert isinstance(info.value, NodeError)
    assert message.startswith("2 guest(s) did not answer within 0.4 s: ")
    assert f"{specs[1].name} (console: line two | line three | Kernel panic - not syncing)" \
        in message
    assert "line one" not in message
    assert f"{specs[2].name} (no console output)" in message
    assert specs[0].name not in message


@pytest.mark.parametrize("state, shown", [("shutoff", "shutoff"), ("crashed", "crashed"),
                                          (None, "gone")])
def test_stopped_guest_fails_fast(guests, state, shown: str) -> None:
    [spec] = guests()
    write(spec.console_log, "Booting the kernel\nOops\n")
    started = time.monotonic()
    with pytest.raises(HypervisorError) as info:
        wait_ready([spec], timeout=60, state_of=lambda _n: state)
    assert time.monotonic() - started < 2
    assert str(info.value) == (f"guest {spec.name} stopped before it was ready "
                               f"(state {shown}); console: Booting the kernel | Oops")


def test_stopped_guest_without_log(guests) -> None:
    [spec] = guests()
    with pytest.raises(HypervisorError) as info:
        wait_ready([spec], timeout=60, state_of=lambda _n: "shutoff")
    assert str(info.value) == f"guest {spec.name} stopped before it was ready (state shutoff)"


def test_only_pending_guests_are_asked_for_their_state(guests) -> None:
    specs = guests(2)
    write(specs[0].console_log, specs[0].ready_line + "\n")
    asked = []

    def state_of(name: str) -> str | None:
        asked.append(name)
        return None if name == specs[1].name else "running"

    with pytest.raises(HypervisorError, match=specs[1].name):
        wait_ready(specs, timeout=60, state_of=state_of)
    assert asked == [specs[1].name]


def test_another_token_does_not_count(guests) -> None:
    [spec] = guests()
    other = replace(spec, ready_token="0123456789abcdef")
    write(spec.console_log, f"{other.ready_line}\nvtorque-ready\nvtorque-ready \n")
    with pytest.raises(GuestTimeout):
        wait_ready([spec], timeout=0.3, state_of=running)


def test_a_longer_token_does_not_count(guests) -> None:
    [spec] = guests()
    write(spec.console_log, f"{spec.ready_line}ff\n{spec.ready_line}-x\n")
    assert not console_has(spec.console_log, spec.ready_line)
    with pytest.raises(GuestTimeout):
        wait_ready([spec], timeout=0.3, state_of=running)


def test_the_token_must_follow_the_prefix(guests) -> None:
    [spec] = guests()
    # The kernel echoes its command line (vtorque.ready=<token>): that is not the signal.
    write(spec.console_log, f"Command line: console=ttyS0 vtorque.ready={spec.ready_token}\n")
    assert not console_has(spec.console_log, spec.ready_line)


@pytest.mark.parametrize("text", ["{line}", "{line}\n", "{line}\r\n", "noise{line} more",
                                  "\x1b[0m{line}\x1b[0m"])
def test_console_has_matches(tmp_path: Path, text: str) -> None:
    line = "vtorque-ready 0011223344556677"
    path = tmp_path / "console.log"
    path.write_text(text.format(line=line))
    assert console_has(str(path), line)


def test_console_has_without_log(tmp_path: Path) -> None:
    assert not console_has(str(tmp_path / "absent.log"), "vtorque-ready x")


def test_console_tail(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    assert console_tail(str(path)) == ""
    path.write_bytes(b"a\r\n\r\nb\rc\n\n  d  \n\xff\n")
    assert console_tail(str(path)) == "c | d | \ufffd"
    assert console_tail(str(path), lines=1) == "\ufffd"


def test_console_tail_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    path.write_text("FIRST\n" + "x" * 10_000 + "\nlast\n")
    tail = console_tail(str(path))
    assert tail.endswith("last")
    assert "FIRST" not in tail
    assert len(tail) <= readiness.TAIL_BYTES + len(" | ")


def test_a_ready_osv_guest_gets_its_host_name(make_specs, tmp_path: Path) -> None:
    """OSv takes no host name from its command line: vtorque sets it through the REST API
    once the guest answers (real OSv: POST /os/hostname?name=...)."""
    from tests.standins.osv_server import OsvStandin
    from vtorque.errors import GuestError
    from vtorque.vm.readiness import osv_set_hostname
    spec = make_specs("osv", network={"mode": "network"})[0]
    with OsvStandin(str(tmp_path / "guest")) as guest:
        spec = replace(spec, ready_url=f"http://{guest.address}:{guest.port}/os/version")
        osv_set_hostname(spec)
        assert guest.hostname == spec.hostname == "vt12-0"
    with pytest.raises(GuestError, match="setting its host name .* failed"):
        osv_set_hostname(spec, timeout=0.5, attempts=2)        # the guest is gone
