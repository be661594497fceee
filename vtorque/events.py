"""A job's phases on a node as events: the prologue's start, its guests ready, its
decision, the end of the job and the teardown's result. Each is one structured JSON line
in the node's log (for log shippers: `vtorque-event {...}`), and each also updates the
node's metrics file (Prometheus text format, for node_exporter's textfile collector).
Recording never fails the caller: an event that cannot be written only loses the event.

    start     the prologue begins provisioning (node, run)
    ready     this node's guests answered (seconds, guests, image, digest)
    failed    this node could not start them (fault: user | this-node, reason)
    decided   the prologue's outcome for the batch system (action, fault, final)
    end       the epilogue begins
    teardown  the epilogue's result (seconds, ok, destroyed)

Metrics outlive the hook process that records them: counters and histogram buckets are
kept in `<state_dir>/.metrics.json` (changed under a lock), gauges are read from the node
when the file is written (job directories and their journals, assigned functions), and
the whole text file is replaced atomically, so the collector never reads half of it.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

PHASES = ("start", "ready", "failed", "decided", "end", "teardown")
MARK = "vtorque-event"

METRICS_NAME = "vtorque.prom"
STATE_NAME = ".metrics.json"
# The node's virtual function assignments (vtorque.ibverbs.VF_LEDGER; a test keeps the two
# in step: this layer may not import ibverbs).
VF_LEDGER = ".vf-assignments.json"
PROVISION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 240.0, 600.0)
TEARDOWN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_LOCK_TIMEOUT = 2.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def event_line(job_id: str, node: str, phase: str, **fields: Any) -> str:
    """The JSON text of one event (pure): keys sorted, values plain JSON."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}")
    data = {"t": round(time.time(), 3), "job": job_id, "node": node, "phase": phase}
    data.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(data, sort_keys=True, default=str)


def record(config, job_id: str, phase: str, **fields: Any) -> None:
    """Write one event to the node's log, then bring the node's metrics file up to date."""
    try:
        from vtorque.log import node_logger
        from vtorque.node import node_name
        node_logger(config).info("%s %s", MARK,
                                 event_line(job_id, node_name(config.node_name), phase,
                                            **fields))
    except Exception:  # noqa: BLE001  (an event must never fail a job)
        return
    try:
        count(config, phase, fields)
    except Exception:  # noqa: BLE001  (nor may its metrics)
        pass


def accounting_note(image: str | None, digest: str | None, boot_seconds: float | None,
                    nodes: int | None = None, restored: tuple[int, int] | None = None
                    ) -> str:
    """What ran, for the batch system's record of the job (Slurm AdminComment, OpenPBS
    job comment): `image=NAME sha256=HEX boot=6.3s[ restored=K/N][ nodes=N]` (restored:
    K of the job's N guests started from a snapshot template, shown when K > 0). Pure;
    every value is checked, so nothing a user chose can reach the record but a catalog
    name."""
    name = image if isinstance(image, str) and _NAME.fullmatch(image) else "unknown"
    sha = digest.lower() if isinstance(digest, str) and _SHA256.fullmatch(digest.lower()) \
        else "unknown"
    parts = [f"image={name}", f"sha256={sha}"]
    if isinstance(boot_seconds, (int, float)) and boot_seconds >= 0:
        parts.append(f"boot={boot_seconds:.1f}s")
    if restored and all(isinstance(n, int) for n in restored) and 0 < restored[0] <= \
            restored[1]:
        parts.append(f"restored={restored[0]}/{restored[1]}")
    if isinstance(nodes, int) and nodes > 0:
        parts.append(f"nodes={nodes}")
    return " ".join(parts)


# --- metrics -------------------------------------------------------------------------------

def metrics_file(config) -> str:
    """Where the node's metrics text file goes: <state_dir>/.metrics/vtorque.prom, the
    directory node_exporter's --collector.textfile.directory names."""
    configured = getattr(config, "metrics_file", None)
    return configured or os.path.join(config.state_dir, ".metrics", METRICS_NAME)


def _empty_state() -> dict[str, Any]:
    return {"counters": {}, "histograms": {}, "last_event": 0.0}


def apply_event(state: dict[str, Any], phase: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The metric state after one event (pure): counters by name and label, histogram
    buckets (per bucket, not cumulative), the time of the last event."""
    counters = state.setdefault("counters", {})
    histograms = state.setdefault("histograms", {})

    def inc(name: str, label: str = "", by: float = 1) -> None:
        table = counters.setdefault(name, {})
        table[label] = table.get(label, 0) + by

    def observe(name: str, buckets: tuple[float, ...], value: Any) -> None:
        if not isinstance(value, (int, float)) or value < 0:
            return
        entry = histograms.get(name)
        if not entry or len(entry.get("buckets", ())) != len(buckets) + 1:
            entry = histograms[name] = {"buckets": [0] * (len(buckets) + 1), "sum": 0.0,
                                        "count": 0}
        index = next((i for i, le in enumerate(buckets) if value <= le), len(buckets))
        entry["buckets"][index] += 1
        entry["sum"] += float(value)
        entry["count"] += 1

    if phase == "ready":
        inc("provisions", "ok")
        inc("guests_started", "", fields.get("guests") or 0)
        observe("provision_seconds", PROVISION_BUCKETS, fields.get("seconds"))
    elif phase == "failed":
        inc("provisions", "failed")
        inc("provision_failures", "user" if fields.get("fault") == "user" else "node")
    elif phase == "decided":
        inc("decisions", str(fields.get("action") or "unknown"))
    elif phase == "teardown":
        inc("teardowns", "ok" if fields.get("ok") else "failed")
        observe("teardown_seconds", TEARDOWN_BUCKETS, fields.get("seconds"))
    state["last_event"] = round(time.time(), 3)
    return state


def count(config, phase: str, fields: dict[str, Any]) -> None:
    """Add one event to the node's metric state and rewrite the metrics file."""
    import filelock
    path = os.path.join(config.state_dir, STATE_NAME)
    from vtorque.files import ensure_trusted_dir
    ensure_trusted_dir(config.state_dir, 0o755)
    try:
        with filelock.FileLock(path + ".lock", timeout=_LOCK_TIMEOUT):
            state = apply_event(read_state(config), phase, fields)
            from vtorque.files import atomic_write
            atomic_write(path, json.dumps(state, sort_keys=True), mode=0o644)
    except filelock.Timeout:
        return
    write_metrics(config, state)


def read_state(config) -> dict[str, Any]:
    """The node's metric state; a missing or damaged file starts from zero."""
    try:
        with open(os.path.join(config.state_dir, STATE_NAME)) as handle:
            state = json.load(handle)
        if isinstance(state, dict) and isinstance(state.get("counters"), dict) \
                and isinstance(state.get("histograms"), dict):
            return state
    except (OSError, ValueError):
        pass
    return _empty_state()


def node_gauges(config) -> dict[str, int]:
    """What the node holds now: jobs with a job directory, guests their journals name,
    virtual functions assigned."""
    from vtorque.journal import Journal
    jobs = guests = 0
    try:
        entries = os.listdir(config.state_dir)
    except OSError:
        entries = []
    for entry in entries:
        path = os.path.join(config.state_dir, entry)
        if entry.startswith(".") or entry.endswith(".user") or os.path.islink(path) \
                or not os.path.isdir(path):
            continue
        jobs += 1
        guests += len(Journal(os.path.join(path, "journal.jsonl")).domain_names())
    try:
        with open(os.path.join(config.state_dir, VF_LEDGER)) as handle:
            table = json.load(handle)
        functions = len(table) if isinstance(table, dict) else 0
    except (OSError, ValueError):
        functions = 0
    return {"jobs": jobs, "guests": guests, "functions": functions}


_COUNTERS = (
    ("provisions", "result", "Provisionings of a job's guests on this node, by result"),
    ("provision_failures", "fault", "Failed provisionings by whose fault: user or node"),
    ("decisions", "action", "Prologue outcomes handed to the batch system: run, abort, "
                            "requeue"),
    ("teardowns", "result", "Teardowns of a job on this node, by result"),
    ("guests_started", None, "Guests that answered their ready check on this node"),
)
_HISTOGRAMS = (
    ("provision_seconds", PROVISION_BUCKETS,
     "Seconds from the prologue's start to every guest of this node answering"),
    ("teardown_seconds", TEARDOWN_BUCKETS,
     "Seconds the epilogue took to destroy a job's guests and files on this node"),
)


def metric_families(state: dict[str, Any], gauges: dict[str, int]) -> list:
    """prometheus_client metric families for one state and the node's gauges (pure)."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
    out: list = []
    counters = state.get("counters", {})
    for name, label, doc in _COUNTERS:
        family = CounterMetricFamily(f"vtorque_{name}", doc,
                                     labels=[label] if label else None)
        for value, amount in sorted(counters.get(name, {}).items()):
            family.add_metric([value] if label else [], float(amount))
        if not label and not counters.get(name):
            family.add_metric([], 0.0)
        out.append(family)
    histograms = state.get("histograms", {})
    for name, buckets, doc in _HISTOGRAMS:
        entry = histograms.get(name)
        if not entry or len(entry.get("buckets", ())) != len(buckets) + 1:
            entry = {"buckets": [0] * (len(buckets) + 1), "sum": 0.0}
        cumulative, total = [], 0
        for le, amount in zip((*map(str, buckets), "+Inf"), entry["buckets"], strict=True):
            total += amount
            cumulative.append((le, float(total)))
        out.append(HistogramMetricFamily(f"vtorque_{name}", doc, buckets=cumulative,
                                         sum_value=float(entry["sum"])))
    for name, key, doc in (("jobs_running", "jobs", "Jobs with guests or files on this node"),
                           ("guests_running", "guests", "Guests of those jobs on this node"),
                           ("virtual_functions_in_use", "functions",
                            "RDMA virtual functions assigned to guests on this node")):
        out.append(GaugeMetricFamily(f"vtorque_{name}", doc, value=gauges.get(key, 0)))
    out.append(GaugeMetricFamily("vtorque_last_event_timestamp_seconds",
                                 "Unix time of the last job event on this node",
                                 value=float(state.get("last_event") or 0.0)))
    return out


def render_metrics(config, state: dict[str, Any] | None = None) -> str:
    """The metrics text file's content, gauges read now."""
    from prometheus_client import CollectorRegistry, generate_latest
    families = metric_families(state if state is not None else read_state(config),
                               node_gauges(config))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry).decode()


def write_metrics(config, state: dict[str, Any] | None = None) -> str:
    """Replace the metrics file atomically (temp file and rename); returns its path."""
    from vtorque.files import atomic_write, ensure_trusted_dir
    path = metrics_file(config)
    ensure_trusted_dir(os.path.dirname(path), 0o755)
    atomic_write(path, render_metrics(config, state), mode=0o644)
    return path


class _Fixed:
    """A collector that yields metric families made elsewhere."""

    def __init__(self, families: list):
        self.families = families

    def collect(self):
        return iter(self.families)
