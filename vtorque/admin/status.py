"""`vtorque status [JOB] [--json]`: where a VM job is, from what the nodes record.

The phase comes from the batch system's state and every node's hand-off status:

    queued        the batch system has not started the job (or requeued it)
    provisioning  the job's prologues are starting guests: k of n nodes ready
    running       every node's guests answered; the script runs in guest rank 0
    tearing down  the job ended and some node still holds part of it
    done          the job ended and no node holds anything of it
    failed        a node could not start its guests (the reason, whose fault)

Per node: its status, its boot time (this node's events); per guest: its state (libvirt,
for root on this node; otherwise the node's record), address, image name and digest.
Users see their own jobs, root sees every job.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from vtorque.admin import jobinfo
from vtorque.cluster import handoff
from vtorque.errors import VtorqueError
from vtorque.text import one_line

QUEUED_STATES = {"Q", "H", "W", "T", "PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "SPECIAL_EXIT", "RESV_DEL_HOLD"}
ENDING_STATES = {"E", "COMPLETING", "STAGE_OUT"}


@dataclass
class GuestView:
    rank: int
    hostname: str
    domain: str
    node: str
    state: str
    address: str | None = None
    image: str | None = None
    digest: str | None = None
    boot_seconds: float | None = None


@dataclass
class NodeView:
    node: str
    state: str                      # starting | ready | failed | not reported
    reason: str = ""
    fault: str | None = None
    boot_seconds: float | None = None
    guests: list[GuestView] = field(default_factory=list)


@dataclass
class JobView:
    job: str
    owner: str | None
    phase: str
    detail: str
    batch_state: str | None
    run: int | None
    fault: str | None = None
    image: str | None = None
    digest: str | None = None
    nodes: list[NodeView] = field(default_factory=list)
    teardown: dict | None = None
    notes: list[str] = field(default_factory=list)


def _last(events: list[dict], phase: str, node: str | None = None) -> dict | None:
    found = [e for e in events if e.get("phase") == phase
             and (node is None or e.get("node") == node)]
    return found[-1] if found else None


def _finished(state: str | None) -> bool:
    from vtorque.admin.reaper import FINISHED_STATES
    return state is not None and state.upper() in FINISHED_STATES


def node_views(facts: jobinfo.JobFacts) -> list[NodeView]:
    """One view per node of the job (batch order), with its guests (pure)."""
    run = facts.batch.run_count if facts.batch is not None else None
    names = list(facts.batch.nodes) if facts.batch is not None else []
    names += [n for n in sorted(facts.statuses) if n not in names]
    domains = {d.name: d.state for d in facts.domains or []}
    views = []
    for name in names:
        status = facts.statuses.get(name)
        if status is not None and run is not None and status.run != run:
            status = None                       # an earlier run's record
        ready = _last(facts.events, "ready", name)
        view = NodeView(name, status.state if status else "not reported")
        if status is not None and status.state == handoff.FAILED:
            view.reason = status.reason
            view.fault = "user" if status.user_fault else "node"
        if ready is not None:
            view.boot_seconds = ready.get("seconds")
        for guest in (status.guests if status else []):
            rank = guest.get("rank")
            if not isinstance(rank, int):
                continue
            domain = str(guest.get("name", ""))
            state = domains.get(domain) or ("running" if view.state == handoff.READY
                                            else view.state)
            view.guests.append(GuestView(
                rank=rank, hostname=str(guest.get("hostname", "")), domain=domain,
                node=name, state=state,
                address=guest.get("address") or jobinfo.address(facts.block, rank),
                image=guest.get("image") or (ready or {}).get("image"),
                digest=guest.get("digest") or (ready or {}).get("digest"),
                boot_seconds=guest.get("ready_seconds", view.boot_seconds)))
        views.append(view)
    return views


def decide(facts: jobinfo.JobFacts) -> JobView:
    """The job's phase from its facts (pure)."""
    ctx = facts.batch
    state = ctx.state if ctx is not None else None
    nodes = node_views(facts)
    ready = _last(facts.events, "ready")
    view = JobView(job=facts.job_id, owner=facts.owner, phase="", detail="",
                   batch_state=state, run=ctx.run_count if ctx is not None else None,
                   image=(ready or {}).get("image"), digest=(ready or {}).get("digest"),
                   nodes=nodes, teardown=_last(facts.events, "teardown"))
    for guest in (g for n in nodes for g in n.guests):
        view.image, view.digest = view.image or guest.image, view.digest or guest.digest
    if facts.batch_problem and not facts.unknown_to_batch:
        view.notes.append(f"batch system: {one_line(facts.batch_problem, 160)}")
    failed = [n for n in nodes if n.state == handoff.FAILED]
    reported = [n for n in nodes if n.state != "not reported"]
    over = facts.unknown_to_batch or _finished(state)
    if over:
        for n in nodes:
            if n.state == "not reported":
                n.state = "nothing left"
    if over or (state or "").upper() in ENDING_STATES:
        if reported or facts.local_state or facts.domains:
            left = ", ".join(n.node for n in reported) or "this node"
            return _set(view, "tearing down", f"the job ended; still held on {left}")
        return _ended(view, facts)
    if (state or "").upper() in QUEUED_STATES:
        decided = _last(facts.events, "decided")
        detail = "waiting for the batch system to start it"
        if decided and decided.get("action") == "requeue" or (ctx and ctx.run_count > 1):
            failure = _last(facts.events, "failed")
            why = f": {one_line(failure.get('reason', ''), 160)}" if failure else ""
            detail = f"requeued after a node fault{why}"
        return _set(view, "queued", detail)
    if failed:
        first = failed[0]
        view.fault = first.fault
        who = "the job's request" if first.fault == "user" else f"node {first.node}"
        return _set(view, "failed", f"{who}: {one_line(first.reason, 240)}")
    if ready is not None and _after(_last(facts.events, "end"), ready):
        return _set(view, "tearing down", "the job ended on this node")
    if nodes and all(n.state == handoff.READY for n in nodes):
        rank0 = next((g for n in nodes for g in n.guests if g.rank == 0), None)
        where = f" ({rank0.hostname} on {rank0.node})" if rank0 else ""
        return _set(view, "running", f"the job script runs in guest rank 0{where}")
    if reported or state is not None:
        done = sum(1 for n in nodes if n.state == handoff.READY)
        return _set(view, "provisioning", f"{done} of {len(nodes) or '?'} node(s) ready")
    return _ended(view, facts)


def _after(later: dict | None, earlier: dict) -> bool:
    return later is not None and later.get("t", 0) >= earlier.get("t", 0)


def _set(view: JobView, phase: str, detail: str) -> JobView:
    view.phase, view.detail = phase, detail
    return view


def _ended(view: JobView, facts: jobinfo.JobFacts) -> JobView:
    """The job is over and nothing of it is left: done, or failed with its reason."""
    failure = _last(facts.events, "failed")
    decided = _last(facts.events, "decided")
    teardown = view.teardown
    if decided and decided.get("action") in ("abort", "requeue") and decided.get("fault"):
        view.fault = "user" if decided["fault"] == "user" else "node"
        why = one_line(failure.get("reason", ""), 240) if failure else decided["fault"]
        return _set(view, "failed", f"{decided['action']}: {why}")
    if teardown and teardown.get("ok") is False:
        view.fault = "node"
        return _set(view, "failed", f"teardown incomplete: "
                                    f"{one_line(teardown.get('reason', ''), 240)}")
    if teardown:
        return _set(view, "done", f"torn down in {teardown.get('seconds', '?')} s")
    return _set(view, "done", "nothing of the job is left on any node")


# --- the command ---------------------------------------------------------------------------

def _short(digest: str | None) -> str:
    return f"sha256:{digest[:12]}" if digest else "digest unknown"


def render(view: JobView) -> str:
    lines = [f"job {view.job} ({view.owner or 'owner unknown'}): {view.phase}: {view.detail}"]
    facts = [f"batch state {view.batch_state or 'unknown'}"]
    if view.run is not None:
        facts.append(f"run {view.run}")
    if view.image:
        facts.append(f"image {view.image} ({_short(view.digest)})")
    lines.append("  " + ", ".join(facts))
    for node in view.nodes:
        boot = f", guests ready after {node.boot_seconds:.1f} s" \
            if isinstance(node.boot_seconds, (int, float)) else ""
        why = f": {node.reason}" if node.reason else ""
        lines.append(f"  node {node.node}: {node.state}{why}{boot}")
        for g in node.guests:
            boot = f"{g.boot_seconds:.1f} s" if isinstance(g.boot_seconds, (int, float)) \
                else "-"
            lines.append(f"    rank {g.rank}  {g.hostname}  {g.state}  "
                         f"{g.address or 'no address'}  {g.image or '-'} "
                         f"{_short(g.digest)}  boot {boot}")
    lines += [f"  note: {n}" for n in view.notes]
    return "\n".join(lines)


def visible(facts: jobinfo.JobFacts, user: str, root: bool) -> bool:
    return root or (facts.owner is not None and facts.owner == user)


def cmd_status(args) -> int:
    from vtorque import config as config_mod
    from vtorque import jobid
    config = config_mod.load(args.config)
    root = os.geteuid() == 0
    user = jobinfo.me()
    events = jobinfo.read_events(config)
    adapter, problem = jobinfo.batch_adapter(config)
    known = jobinfo.known_jobs(config, events, root=root)
    if args.job_id is not None:
        jobid.check(args.job_id, "job")
        job_id = jobinfo.resolve_id(args.job_id, known)
        facts = jobinfo.gather(config, job_id, adapter, problem, events=events, root=root)
        if facts.batch is None and not facts.recorded:
            raise VtorqueError(f"job {job_id} is unknown here (" + (
                "not in the batch system" if facts.unknown_to_batch
                else f"batch system: {one_line(facts.batch_problem, 120)}")
                + "; no node recorded anything of it)")
        if facts.batch is not None and not facts.batch.is_vm_job and not facts.recorded:
            raise VtorqueError(f"job {job_id} is not a VM job (no -vm request)")
        if not visible(facts, user, root):
            raise VtorqueError(f"job {job_id} belongs to another user; users see only "
                               "their own jobs")
        view = decide(facts)
        print(json.dumps(asdict(view), sort_keys=True) if args.json else render(view))
        return 0
    views = []
    for job_id in known:
        facts = jobinfo.gather(config, job_id, adapter, problem, events=events, root=root)
        if visible(facts, user, root):
            views.append(decide(facts))
    if args.json:
        print(json.dumps([asdict(v) for v in views], sort_keys=True))
    elif not views:
        print("no VM jobs recorded here" + ("" if root else f" for {user}"))
    else:
        print("JOB\tOWNER\tPHASE\tNODES\tGUESTS\tIMAGE")
        for v in views:
            guests = sum(len(n.guests) for n in v.nodes)
            print(f"{v.job}\t{v.owner or '?'}\t{v.phase}\t{len(v.nodes)}\t{guests}\t"
                  f"{v.image or '-'}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="where a VM job is: phase, nodes, guests, image "
                       "(users: their own jobs; root: all)",
                       description="Without JOB: every VM job this node knows of (running "
                       "anywhere in the cluster, or ended here within a day).")
    p.add_argument("job_id", metavar="JOB", nargs="?",
                   help="job id as the batch system prints it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
