"""What a prologue does on one node, for any batch system: re-validate the job's request
(read back from the batch server by the hook), bring up this node's guests, publish them,
and on the mother superior wait for every node before the job may start.

Returns an Outcome (vtorque.outcome): the action, the message and whose fault a failure
was; the scheduler's hook (vtorque.hooks) turns it into what its batch system understands
and applies the requeue limit.
"""

from __future__ import annotations

from vtorque import events, node
from vtorque.batch.base import JobContext
from vtorque.cluster import handoff
from vtorque.config import Config
from vtorque.errors import NodeError, UserError, VtorqueError
from vtorque.log import node_logger
from vtorque.outcome import THIS_NODE, USER, Outcome


def provision(ctx: JobContext, config: Config, *, mother_superior: bool) -> Outcome:
    """Bring up this node's guests of `ctx`; on the mother superior also wait for all."""
    if not ctx.is_vm_job:
        return Outcome.run()
    log = node_logger(config)
    name = node.node_name(config.node_name)
    try:
        index = ctx.node_index(name)
    except VtorqueError as exc:
        return Outcome.node_fault(f"vtorque: job {ctx.job_id}: {exc}", name)
    name = ctx.nodes[index]
    log.info("job %s: provisioning on %s (run %d)", ctx.job_id, name, ctx.run_count)
    events.record(config, ctx.job_id, "start", run=ctx.run_count)
    try:
        result, job_guests = _bring_up(ctx, config, index)
    except UserError as exc:
        log.error("job %s: request refused on %s: %s", ctx.job_id, name, exc)
        events.record(config, ctx.job_id, "failed", fault=USER, reason=str(exc))
        _publish_failure(config, ctx, name, str(exc), user_fault=True)
        return Outcome.user_error(f"vtorque: job {ctx.job_id} refused: {exc}")
    except (VtorqueError, OSError) as exc:
        if isinstance(exc, OSError):     # a file system the job needs refused a write
            exc = NodeError(f"{exc.filename or 'the job state'}: {exc.strerror or exc}")
        log.error("job %s: provisioning failed on %s: %s", ctx.job_id, name, exc)
        events.record(config, ctx.job_id, "failed", fault=THIS_NODE, reason=str(exc))
        _publish_failure(config, ctx, name, str(exc), user_fault=False)
        return Outcome.node_fault(f"vtorque: node {name} failed to start the job's guests: "
                                  f"{exc}", name)
    guests = [{"rank": g.rank, "name": g.name, "hostname": g.hostname, "mac": g.mac}
              for g in result.guests]
    handoff.publish(config, ctx.job_id, handoff.NodeStatus(
        name, handoff.READY, guests=guests, run=ctx.run_count, rdma=result.rdma))
    log.info("job %s: %d guest(s) ready on %s in %.1f s", ctx.job_id, len(guests), name,
             result.seconds)
    events.record(config, ctx.job_id, "ready", seconds=round(result.seconds, 3),
                  guests=len(guests), image=result.image_name, digest=result.image_digest)
    if not mother_superior:
        return Outcome.run()
    return _assemble(ctx, config, name, job_guests, result.image_kind)


def _bring_up(ctx: JobContext, config: Config, index: int):
    from vtorque.prologue.guests import bring_up
    from vtorque.request import build_request, decode_pairs
    request = build_request(decode_pairs(ctx.vm_request), config)
    return bring_up(ctx.job_id, request, config, user=ctx.user, node_index=index,
                    node_count=len(ctx.nodes), node=ctx.nodes[index], run=ctx.run_count)


def _publish_failure(config: Config, ctx: JobContext, name: str, reason: str,
                     user_fault: bool) -> None:
    """Tell the mother superior; if even that fails, it finds out by its timeout."""
    try:
        handoff.publish(config, ctx.job_id, handoff.NodeStatus(
            name, handoff.FAILED, reason, user_fault=user_fault, run=ctx.run_count))
    except (VtorqueError, OSError) as exc:
        node_logger(config).error("job %s: cannot publish the failure of %s: %s",
                                  ctx.job_id, name, exc)


def _assemble(ctx: JobContext, config: Config, name: str, job_guests,
              image_kind: str) -> Outcome:
    """The mother superior: wait for every node, then write the owner's files."""
    from vtorque.epilogue.teardown import release_functions
    from vtorque.prologue.guests import write_user_files
    from vtorque.vm import lifecycle
    log = node_logger(config)
    statuses = handoff.collect(config, ctx.job_id, ctx.nodes, config.timeouts.provision,
                               run=ctx.run_count)
    failed = [s for s in statuses.values() if s.state != handoff.READY]
    if not failed:
        failed = _mixed_transports(statuses)
    own_failure = None
    if not failed:
        try:
            write_user_files(ctx.job_id, config, ctx.user, job_guests, image_kind)
            return Outcome.run()
        except (VtorqueError, OSError, KeyError) as exc:
            own_failure = f"cannot write the job's files: {exc}"
            failed = [handoff.NodeStatus(name, handoff.FAILED, own_failure)]
    # Roll back here; every other node rolls back in its epilogue (or the reaper does
    # it): the batch system runs those on every node of the job. Only this node's
    # guests: the job-wide pieces stay until the last node is clean (cluster.jobwide).
    try:
        lifecycle.down(ctx.job_id, config)
        release_functions(ctx.job_id, config)
    except VtorqueError as exc:
        log.error("job %s: rollback on %s failed: %s", ctx.job_id, name, exc)
    reasons = "; ".join(f"{s.node}: {s.reason}" for s in failed)
    log.error("job %s: not started: %s", ctx.job_id, reasons)
    if any(s.user_fault for s in failed):
        return Outcome.user_error(f"vtorque: job {ctx.job_id} refused: {reasons}")
    message = f"vtorque: job {ctx.job_id} could not start its guests: {reasons}"
    if own_failure is not None:
        return Outcome.node_fault(message, name)
    return Outcome.others_fault(message, tuple(s.node for s in failed))


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
