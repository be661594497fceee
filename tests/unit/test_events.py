"""Unit tests of vtorque.events: one JSON line per phase in the node's log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vtorque import events


def lines(config: Any) -> list[dict]:
    text = Path(config.log_file).read_text()
    return [json.loads(line.split(events.MARK + " ", 1)[1])
            for line in text.splitlines() if events.MARK in line]


def test_each_event_is_one_json_line_a_shipper_can_read(make_config: Any) -> None:
    config = make_config({"node_name": "n1"})
    events.record(config, "12.h", "start", run=2)
    events.record(config, "12.h", "teardown", ok=True, seconds=1.25, destroyed=2,
                  reason=None)
    first, second = lines(config)
    assert (first["job"], first["node"], first["phase"], first["run"]) == ("12.h", "n1",
                                                                           "start", 2)
    assert second["ok"] is True and second["seconds"] == 1.25 and "reason" not in second
    assert first["t"] <= second["t"]


def test_a_users_value_cannot_forge_a_line(make_config: Any) -> None:
    config = make_config({"node_name": "n1"})
    events.record(config, "12.h", "failed", reason="bad\nvtorque-event {\"phase\": \"x\"}")
    text = Path(config.log_file).read_text()
    assert text.count("\n") == 1
    assert lines(config)[0]["reason"].startswith("bad\n")      # kept, as JSON escapes it


def test_unknown_phases_are_refused_and_recording_never_fails(make_config: Any,
                                                              tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        events.event_line("1", "n1", "bogus")
    config = make_config({"log_file": str(tmp_path / "file" / "under" / "a" / "file")})
    (tmp_path / "file").write_text("not a directory")
    events.record(config, "1", "start")             # no exception: only the event is lost
    events.record(config, "1", "bogus")
