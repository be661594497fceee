"""What a prologue does on one node, for any batch system: read the job's request back
from the batch server, re-validate it, bring up this node's guests, publish them, and on
the mother superior wait for every node before the job may start.

Returns an Outcome; the scheduler-specific entry (vtorque/hooks.py) turns it into the
exit status its batch system understands.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtorque import node
from vtorque.batch.base import JobContext
from vtorque.config import Config
from vtorque.errors import NodeError, UserError, VtorqueError
from vtorque.log import node_logger
from vtorque.prologue import handoff

RUN, ABORT, REQUEUE = "run", "abort", "requeue"


@dataclass(frozen=True)
class Outcome:
    action: str          # run | abort | requeue
    message: str = ""


def node_name(config: Config) -> str:
    return node.node_name(config.node_name)


def node_index(name: str, nodes: tuple[str, ...]) -> int:
    """Position of this node in the job's node list; a short name matches its FQDN."""
    if name in nodes:
        return nodes.index(name)
    short = name.split(".")[0]
    matches = [i for i, n in enumerate(nodes) if n.split(".")[0] == short]
    if len(matches) == 1:
        return matches[0]
    raise NodeError(f"this node ({name}) is not among the job's nodes: " + ", ".join(nodes))


def node_fault(ctx: JobContext, config: Config, reason: str) -> Outcome:
    """Requeue for a node fault, unless the job was requeued too often already."""
    if ctx.run_count > config.batch.max_requeues:
        return Outcome(ABORT, f"{reason}; the job was started {ctx.run_count} times and "
                              f"failed on node faults (limit batch.max_requeues="
                              f"{config.batch.max_requeues}), aborting it")
    return Outcome(REQUEUE, reason)


def provision(ctx: JobContext, config: Config, *, mother_superior: bool) -> Outcome:
    """Bring up this node's guests of `ctx`; on the mother superior also wait for all."""
    log = node_logger(config)
    if not ctx.is_vm_job:
        return Outcome(RUN)
    from vtorque.epilogue.teardown import clean_node
    from vtorque.prologue.guests import bring_up, write_user_files
    from vtorque.request import build_request, decode_pairs

    name = node_name(config)
    log.info("job %s: provisioning on %s (run %d)", ctx.job_id, name, ctx.run_count)
    try:
        index = node_index(name, ctx.nodes)
        name = ctx.nodes[index]
        request = build_request(decode_pairs(ctx.vm_request), config)
        result, job_guests = bring_up(ctx.job_id, request, config, user=ctx.user,
                                      node_index=index, node_count=len(ctx.nodes))
    except UserError as exc:
        log.error("job %s: request refused on %s: %s", ctx.job_id, name, exc)
        handoff.publish(config, ctx.job_id, handoff.NodeStatus(
            name, handoff.FAILED, str(exc), user_fault=True, run=ctx.run_count))
        return Outcome(ABORT, f"vtorque: job {ctx.job_id} refused: {exc}")
    except VtorqueError as exc:
        log.error("job %s: provisioning failed on %s: %s", ctx.job_id, name, exc)
        handoff.publish(config, ctx.job_id, handoff.NodeStatus(name, handoff.FAILED, str(exc),
                                                               run=ctx.run_count))
        return node_fault(ctx, config, f"vtorque: node {name} failed to start the job's "
                                       f"guests: {exc}")
    guests = [{"rank": g.rank, "name": g.name, "hostname": g.hostname, "mac": g.mac}
              for g in result.guests]
    handoff.publish(config, ctx.job_id, handoff.NodeStatus(name, handoff.READY, guests=guests,
                                                           run=ctx.run_count, rdma=result.rdma))
    log.info("job %s: %d guest(s) ready on %s in %.1f s", ctx.job_id, len(guests), name,
             result.seconds)
    if not mother_superior:
        return Outcome(RUN)
    statuses = handoff.collect(config, ctx.job_id, ctx.nodes, config.timeouts.provision,
                               run=ctx.run_count)
    failed = [s for s in statuses.values() if s.state != handoff.READY]
    if not failed:
        failed = _mixed_transports(statuses)
    if not failed:
        try:
            write_user_files(ctx.job_id, config, ctx.user, job_guests, result.image_kind)
            return Outcome(RUN)
        except (VtorqueError, OSError, KeyError) as exc:
            failed = [handoff.NodeStatus(name, handoff.FAILED,
                                         f"cannot write the job's files: {exc}")]
    # Another node failed: roll back here; every other node rolls back in its epilogue
    # (or the reaper does it) — the batch system runs those on every node of the job.
    try:
        # Only this node's guests: the job's address block stays until the epilogues (or
        # the reaper) have removed every node's guests, and a requeued run reuses it.
        clean_node(ctx.job_id, config, mother_superior=False)
    except VtorqueError as exc:
        log.error("job %s: rollback on %s failed: %s", ctx.job_id, name, exc)
    reasons = "; ".join(f"{s.node}: {s.reason}" for s in failed)
    log.error("job %s: not started: %s", ctx.job_id, reasons)
    if any(s.user_fault for s in failed):
        return Outcome(ABORT, f"vtorque: job {ctx.job_id} refused: {reasons}")
    return node_fault(ctx, config, f"vtorque: job {ctx.job_id} could not start its guests: "
                                   f"{reasons}")


def _mixed_transports(statuses: dict[str, handoff.NodeStatus]) -> list[handoff.NodeStatus]:
    """A job's guests must all speak one RDMA transport: an SR-IOV InfiniBand function
    cannot talk to Soft-RoCE. Nodes that disagree refuse the job (running it again on
    the same mix would not help); the site keeps such nodes apart with node features."""
    kinds = {s.node: s.rdma for s in statuses.values() if s.rdma}
    if len(set(kinds.values())) < 2:
        return []
    mix = ", ".join(f"{node} {kind}" for node, kind in sorted(kinds.items()))
    return [handoff.NodeStatus(next(iter(kinds)), handoff.FAILED,
                               f"the job's nodes gave its guests different RDMA transports "
                               f"({mix}); request nodes of one kind", user_fault=True)]


def prologue(ctx: JobContext, config: Config, *, claimed_user: str | None,
             mother_superior: bool) -> Outcome:
    """A prologue's decision for any batch system: the owner the hook was told about must
    be the server's, then provision; every failure becomes an Outcome."""
    if claimed_user is not None and claimed_user != ctx.user:
        return Outcome(ABORT, f"vtorque: job {ctx.job_id}: the batch system says user "
                              f"{claimed_user!r} here, the server says {ctx.user!r}; "
                              "refusing to start guests")
    try:
        return provision(ctx, config, mother_superior=mother_superior)
    except VtorqueError as exc:  # e.g. the shared state directory is unwritable
        return node_fault(ctx, config, f"vtorque: job {ctx.job_id}: {exc}")
