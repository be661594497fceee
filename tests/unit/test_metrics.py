"""Unit tests of the metrics sink in vtorque.events and `vtorque metrics`: every job event
updates a Prometheus text file (node_exporter's textfile collector) that prometheus_client's
own parser reads back; the image note for the batch system's record is pure and checked."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vtorque import events
from tests.unit.operator_site import write_config
from vtorque.admin import cli

DIGEST = "85667e6c72245133bd7e3e80bac7d16b26fda15c0a3c68faa4b713850ea526cd"


def parsed(text: str) -> dict[str, Any]:
    """{sample name + labels: value} of a metrics text, through prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def test_each_event_updates_a_file_the_collector_can_parse(make_config: Any) -> None:
    config = make_config({"node_name": "n1"})
    events.record(config, "12", "start", run=0)
    events.record(config, "12", "ready", seconds=6.5, guests=2, image="testguest",
                  digest=DIGEST)
    events.record(config, "13", "failed", fault="user", reason="image refused")
    events.record(config, "14", "failed", fault="this-node", reason="libvirt down")
    events.record(config, "14", "decided", action="requeue", fault="this-node")
    events.record(config, "12", "teardown", ok=True, seconds=0.4, destroyed=2)
    path = Path(events.metrics_file(config))
    assert path == Path(config.state_dir) / ".metrics" / "vtorque.prom"
    values = parsed(path.read_text())
    assert values["vtorque_provision_seconds_count{}"] == 1
    assert values["vtorque_provision_seconds_sum{}"] == 6.5
    assert values["vtorque_provision_seconds_bucket{le=5.0}"] == 0
    assert values["vtorque_provision_seconds_bucket{le=10.0}"] == 1
    assert values["vtorque_provision_seconds_bucket{le=+Inf}"] == 1
    assert values["vtorque_teardown_seconds_bucket{le=0.5}"] == 1
    assert values["vtorque_provision_failures_total{fault=user}"] == 1
    assert values["vtorque_provision_failures_total{fault=node}"] == 1
    assert values["vtorque_decisions_total{action=requeue}"] == 1
    assert values["vtorque_guests_started_total{}"] == 2
    assert values["vtorque_teardowns_total{result=ok}"] == 1
    assert values["vtorque_jobs_running{}"] == 0
    assert values["vtorque_last_event_timestamp_seconds{}"] > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["vtorque.prom"]   # no temp files


def test_gauges_are_what_the_node_holds_now(make_config: Any) -> None:
    config = make_config()
    state = Path(config.state_dir)
    job = state / "12-abc"
    job.mkdir(parents=True)
    (job / "journal.jsonl").write_text(
        json.dumps({"event": "guest-starting", "domain": "vtorque-12-abc-0"}) + "\n"
        + json.dumps({"event": "guest-starting", "domain": "vtorque-12-abc-1"}) + "\n")
    (state / "12-abc.user").mkdir()
    (state / events.VF_LEDGER).write_text(json.dumps({"0000:03:00.1": {}}))
    values = parsed(events.render_metrics(config))
    assert values["vtorque_jobs_running{}"] == 1
    assert values["vtorque_guests_running{}"] == 2
    assert values["vtorque_virtual_functions_in_use{}"] == 1


def test_the_vf_ledger_name_is_the_one_ibverbs_writes() -> None:
    from vtorque.ibverbs import VF_LEDGER
    assert events.VF_LEDGER == VF_LEDGER


def test_a_damaged_state_starts_from_zero_and_never_fails_the_event(make_config: Any,
                                                                     tmp_path: Path) -> None:
    config = make_config()
    os.makedirs(config.state_dir)
    Path(config.state_dir, events.STATE_NAME).write_text("{not json")
    events.record(config, "1", "ready", seconds=1.0, guests=1)
    assert parsed(Path(events.metrics_file(config)).read_text())[
        "vtorque_provisions_total{result=ok}"] == 1
    broken = make_config({"state_dir": str(tmp_path / "file" / "state")})
    (tmp_path / "file").write_text("not a directory")
    events.record(broken, "1", "ready", seconds=1.0)      # no exception: only metrics lost
    assert events.metrics_file(broken).startswith(str(tmp_path / "file"))


def test_vtorque_metrics_prints_and_writes(tmp_path: Path, config_data: dict,
                                           capsys: Any) -> None:
    config = write_config(tmp_path / "vtorque.yaml", config_data)
    events.record(config, "7", "ready", seconds=3.0, guests=1)
    assert cli.main(["--config", config.path, "metrics"]) == 0
    values = parsed(capsys.readouterr().out)
    assert values["vtorque_provision_seconds_count{}"] == 1
    os.unlink(events.metrics_file(config))
    assert cli.main(["--config", config.path, "metrics", "--write"]) == 0
    assert "wrote " in capsys.readouterr().out
    assert parsed(Path(events.metrics_file(config)).read_text())[
        "vtorque_provision_seconds_count{}"] == 1


def test_apply_event_is_pure_and_counts_by_label() -> None:
    state = events.apply_event({}, "decided", {"action": "abort", "fault": "user"})
    state = events.apply_event(state, "decided", {"action": "abort"})
    state = events.apply_event(state, "teardown", {"ok": False, "seconds": 100.0})
    assert state["counters"]["decisions"] == {"abort": 2}
    assert state["counters"]["teardowns"] == {"failed": 1}
    assert state["histograms"]["teardown_seconds"]["buckets"][-1] == 1   # beyond 60 s


@pytest.mark.parametrize(("args", "note"), [
    (("testguest", DIGEST, 6.25), f"image=testguest sha256={DIGEST} boot=6.2s"),
    (("deb12", DIGEST.upper(), 61.0, 2), f"image=deb12 sha256={DIGEST} boot=61.0s nodes=2"),
    (("bad name;rm", "xyz", None), "image=unknown sha256=unknown"),
    ((None, None, -1.0, 0), "image=unknown sha256=unknown"),
])
def test_the_accounting_note_names_exactly_what_ran(args: tuple, note: str) -> None:
    assert events.accounting_note(*args) == note
    assert len(events.accounting_note("x" * 64, DIGEST, 99999.9, 9999)) <= 200
