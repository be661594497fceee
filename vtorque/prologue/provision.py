"""What a prologue does on one node, for any batch system: re-validate the job's request
(read back from the batch server by the hook), bring up this node's guests, publish them,
and on the mother superior wait for every node before the job may start.

Two steps, which a batch system may run in one event or in two:

    provision  every node: bring up this node's guests, publish ready or failed
    assemble   the mother superior, after its own provision: wait for every node, then
               write the owner's files (or roll back and say whose fault it was)

Torque: each sister provisions in its prologue.parallel, the mother superior runs both
steps in its prologue. Slurm: every node's Prolog provisions, the first node's also
assembles. OpenPBS starts a sister's prologue only once the mother superior's has
accepted, so there every node provisions in execjob_begin and the mother superior
assembles in execjob_prologue.

Returns an Outcome (vtorque.outcome): the action, the message and whose fault a failure
was; the scheduler's hook (vtorque.hooks) turns it into what its batch system understands
and applies the requeue limit.

Provision is where every batch system's prologue first makes something for a VM job on a
node, so it is where the job is marked on the node (vtorque.markers): before its status
in the hand-off, its address block, any file, lock or guest. A node that cannot mark the
job makes nothing, not even a failed status (the mother superior finds out by its
timeout), and reports its own fault. Then, before anything is made, the request is held
against what the batch system allocated the job on this node
(request.check_fits_allocation): guests beyond it are the user's error.
"""

from __future__ import annotations

from vtorque import events, markers, node
from vtorque.batch.base import JobContext
from vtorque.cluster import handoff
from vtorque.config import Config
from vtorque.errors import NodeError, UserError, VtorqueError
from vtorque.log import node_logger
from vtorque.outcome import RUN, THIS_NODE, USER, Outcome


def start(ctx: JobContext, config: Config, *, mother_superior: bool,
          provision_here: bool = True, assemble: bool = True) -> Outcome:
    """This node's part of starting the job: provision its guests (unless another event
    did), and on the mother superior assemble the job."""
    if not ctx.is_vm_job:
        return Outcome.run()
    entries = None
    if provision_here:
        outcome, entries = _provision(ctx, config)
        if outcome.action != RUN:
            if not mother_superior and _holds_nothing(ctx.job_id, config):
                # A sister that rolled back to nothing: the real Torque runs no epilogue
                # there after a failed start, so the mark goes now (its published status
                # says clean, and the mother superior's end removes it with the job's
                # hand-off). The mother superior keeps its mark: its epilogue cleans the
                # job's hand-off and job-wide pieces.
                markers.unmark(config, ctx.job_id)
            return outcome
    if not (mother_superior and assemble):
        return Outcome.run()
    return assemble_job(ctx, config, entries)


def this_node(ctx: JobContext, config: Config) -> str:
    """This node's name as the job's node list spells it (NodeError when absent)."""
    return ctx.nodes[ctx.node_index(node.node_name(config.node_name))]


def provision(ctx: JobContext, config: Config) -> Outcome:
    """Bring up this node's guests of `ctx` and publish them (or the failure)."""
    return _provision(ctx, config)[0]


def _provision(ctx: JobContext, config: Config) -> tuple[Outcome, list | None]:
    """provision(), and every guest of the job as the owner's files will name them."""
    if not ctx.is_vm_job:
        return Outcome.run(), None       # nothing to make, and never a mark
    log = node_logger(config)
    try:
        name = this_node(ctx, config)
    except VtorqueError as exc:
        name = node.node_name(config.node_name)
        return Outcome.node_fault(f"vtorque: job {ctx.job_id}: {exc}", name), None
    index = ctx.nodes.index(name)
    try:
        markers.mark(config, ctx.job_id)      # before anything of the job exists here
    except (VtorqueError, OSError) as exc:
        reason = f"cannot mark job {ctx.job_id} on this node: {_os_reason(exc)}"
        log.error("job %s: provisioning failed on %s: %s", ctx.job_id, name, reason)
        events.record(config, ctx.job_id, "failed", fault=THIS_NODE, reason=reason)
        return Outcome.node_fault(f"vtorque: node {name} failed to start the job's guests: "
                                  f"{reason}", name), None
    log.info("job %s: provisioning on %s (run %d)", ctx.job_id, name, ctx.run_count)
    events.record(config, ctx.job_id, "start", run=ctx.run_count, user=ctx.user)
    try:
        result, job_guests = _bring_up(ctx, config, index)
    except UserError as exc:
        log.error("job %s: request refused on %s: %s", ctx.job_id, name, exc)
        events.record(config, ctx.job_id, "failed", fault=USER, reason=str(exc))
        _publish_failure(config, ctx, name, str(exc), user_fault=True)
        return Outcome.user_error(f"vtorque: job {ctx.job_id} refused: {exc}"), None
    except (VtorqueError, OSError) as exc:
        if isinstance(exc, OSError):     # a file system the job needs refused a write
            exc = NodeError(_os_reason(exc))
        log.error("job %s: provisioning failed on %s: %s", ctx.job_id, name, exc)
        events.record(config, ctx.job_id, "failed", fault=THIS_NODE, reason=str(exc))
        _publish_failure(config, ctx, name, str(exc), user_fault=False)
        return Outcome.node_fault(f"vtorque: node {name} failed to start the job's guests: "
                                  f"{exc}", name), None
    guests = [{"rank": g.rank, "name": g.name, "hostname": g.hostname, "mac": g.mac,
               "kind": result.image_kind, "address": g.address,
               "ready_seconds": g.ready_seconds, "image": result.image_name,
               "digest": result.image_digest, "started": g.started} for g in result.guests]
    handoff.publish(config, ctx.job_id, handoff.NodeStatus(
        name, handoff.READY, guests=guests, run=ctx.run_count, rdma=result.rdma))
    log.info("job %s: %d guest(s) ready on %s in %.1f s (%d from the node's snapshot "
             "template)", ctx.job_id, len(guests), name, result.seconds, result.restored)
    events.record(config, ctx.job_id, "ready", seconds=round(result.seconds, 3),
                  guests=len(guests), image=result.image_name, digest=result.image_digest,
                  restored=result.restored)
    return Outcome.run(), job_guests


def _os_reason(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.filename or 'the job state'}: {exc.strerror or exc}"
    return str(exc)


def _request(ctx: JobContext, config: Config):
    from vtorque.request import build_request, decode_pairs
    return build_request(decode_pairs(ctx.vm_request), config)


def check_allocation(ctx: JobContext, config: Config, request, index: int) -> None:
    """Refuse (RequestError, the user's) guests of `request` on node `index` of the job
    that exceed what the batch system allocated the job there: vCPUs against its cores,
    RAM, QEMU's overhead and disks on ramdisk against its memory (when bounded). A record
    that names no allocation for the node leaves the check to the node's own cores and
    memory (lifecycle.check), with a line in the log. An allocation the server printed
    unreadably never gets here: the adapter refused the record (batch/allocation.py)."""
    from vtorque.request import check_fits_allocation
    name = ctx.nodes[index]
    allocation = ctx.allocation(name)
    if allocation is None:
        node_logger(config).warning(
            "job %s: the %s record names no allocation for node %s; its guests are "
            "checked against the node only", ctx.job_id, ctx.scheduler, name)
        return
    # With fs_type=ramdisk the overlays live in memory too, but what they grow to (at
    # most the image's virtual size) is not known before the image is authorized
    # (lifecycle.check): only the scratch disk of rank 0 is counted here.
    check_fits_allocation(request, allocation, name, rank0_here=index == 0)


def job_cores(ctx: JobContext, config: Config, request, index: int):
    """(request, the host cores the guests run on) on node `index`: the cores the batch
    system gave the job there, never another job's (every one of them, sorted: the guests
    take their shares by NUMA node, vm/numa.py). Pinned guests need a core per vCPU (the
    user's error when the job has fewer). A record that names no cores (e.g. OpenPBS
    without a cgroup hook): no cores, and pinning off with a line in the log (pinning to
    cores another job may hold is worse). No allocation in the record: no cores, pinned
    guests follow the node's own rule (consecutive cores after the host's reserve)."""
    import dataclasses

    from vtorque.errors import RequestError
    name = ctx.nodes[index]
    allocation = ctx.allocation(name)
    if allocation is None:
        return request, None
    if not allocation.cores:
        if request.vcpu_pinning:
            node_logger(config).warning(
                "job %s: vcpu_pinning asked, but the %s record names no cores of the job "
                "on node %s; its guests run unpinned", ctx.job_id, ctx.scheduler, name)
            return dataclasses.replace(request, vcpu_pinning=False), None
        return request, None
    need = request.vcpus * request.vms_per_node
    cores = tuple(sorted(allocation.cores))
    if request.vcpu_pinning and need > len(cores):
        raise RequestError(f"-vm vcpu_pinning=yes: {request.vms_per_node} guest(s) of "
                           f"{request.vcpus} vCPU(s) need {need} cores on node {name}, but "
                           f"the batch system gave this job {len(cores)} there", key="vcpus")
    return request, cores


def _bring_up(ctx: JobContext, config: Config, index: int):
    from vtorque.prologue.guests import bring_up
    request = _request(ctx, config)
    check_allocation(ctx, config, request, index)
    request, cores = job_cores(ctx, config, request, index)
    return bring_up(ctx.job_id, request, config, user=ctx.user,
                    node_index=index, node_count=len(ctx.nodes), node=ctx.nodes[index],
                    run=ctx.run_count, workdir=ctx.workdir, keys=_keys(ctx),
                    job_cores=cores)


def _keys(ctx: JobContext):
    """The one job the SSH keys belong to (NodeError when the server does not say)."""
    from vtorque.mpi import sshkeys
    return sshkeys.scope_for(ctx.job_id, ctx.user, ctx.created, ctx.uid)


def _job_entries(ctx: JobContext, config: Config):
    """Every guest of the job as the owner's files name them (derived, as each node did)."""
    from vtorque.mpi import sshkeys
    from vtorque.prologue.guests import job_guests
    from vtorque.vm import addresses
    request = _request(ctx, config)
    block = None
    if config.network.mode != "none":
        block = addresses.allocate(config, ctx.job_id, len(ctx.nodes) * request.vms_per_node)
    return job_guests(ctx.job_id, request, len(ctx.nodes), block,
                      sshkeys.read_secret(config.secret_file), _keys(ctx))


def _publish_failure(config: Config, ctx: JobContext, name: str, reason: str,
                     user_fault: bool) -> None:
    """Tell the mother superior; if even that fails, it finds out by its timeout. The
    status says whether this node is left holding nothing of the job: not every batch
    system runs a node's epilogue after its prologue failed (Torque runs only the mother
    superior's), so a node that rolled back completely must not keep the job-wide pieces
    (cluster/jobwide.py)."""
    try:
        handoff.publish(config, ctx.job_id, handoff.NodeStatus(
            name, handoff.FAILED, reason, user_fault=user_fault, run=ctx.run_count,
            clean=_holds_nothing(ctx.job_id, config)))
    except (VtorqueError, OSError) as exc:
        node_logger(config).error("job %s: cannot publish the failure of %s: %s",
                                  ctx.job_id, name, exc)


def _holds_nothing(job_id: str, config: Config) -> bool:
    """No file, function or guest of the job is left on this node (doubt: it holds).
    Guests exist only while the job's directory does (teardown.has_local_state)."""
    from vtorque.epilogue.teardown import has_local_state
    try:
        return not has_local_state(job_id, config)
    except (VtorqueError, OSError):
        return False


def assemble_job(ctx: JobContext, config: Config, entries: list | None = None) -> Outcome:
    """The mother superior: wait for every node, then write the owner's files (`entries`:
    the job's guests when this node has just derived them)."""
    from vtorque.epilogue.teardown import release_functions
    from vtorque.prologue.guests import write_user_files
    from vtorque.vm import lifecycle
    log = node_logger(config)
    try:
        name = this_node(ctx, config)
    except VtorqueError as exc:
        name = node.node_name(config.node_name)
        return Outcome.node_fault(f"vtorque: job {ctx.job_id}: {exc}", name)
    try:
        _request(ctx, config)          # refused at once, whatever the other nodes do
    except UserError as exc:
        return Outcome.user_error(f"vtorque: job {ctx.job_id} refused: {exc}")
    statuses = handoff.collect(config, ctx.job_id, ctx.nodes, config.timeouts.provision,
                               run=ctx.run_count)
    failed = [s for s in statuses.values() if s.state != handoff.READY]
    if not failed:
        failed = _mixed_transports(statuses)
    if not failed:
        try:
            kinds = [g.get("kind") for g in statuses[name].guests if isinstance(g, dict)]
            write_user_files(ctx.job_id, config, ctx.user,
                             entries if entries is not None else _job_entries(ctx, config),
                             _keys(ctx), kinds[0] if kinds and kinds[0] else "linux")
            return Outcome.run(note=_what_runs(statuses[name], statuses.values(),
                                               len(ctx.nodes)))
        except (VtorqueError, OSError, KeyError) as exc:
            failed = [handoff.NodeStatus(name, handoff.FAILED,
                                         f"cannot write the job's files: {exc}")]
    # Roll back here (a node that failed rolled back already); every other node rolls
    # back in its epilogue or abort event, or at the job's next start, or the reaper does
    # it. Only this node's guests: the job-wide pieces stay until the last node is clean
    # (cluster.jobwide).
    own = statuses.get(name)
    if own is not None and own.state == handoff.READY:
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
    if any(s.node == name for s in failed):
        return Outcome.node_fault(message, name)
    return Outcome.others_fault(message, tuple(s.node for s in failed))


def _what_runs(own: handoff.NodeStatus, everyone, nodes: int) -> str:
    """The job's record of a start: the image and digest this node's guests run and the
    slowest guest's boot, e.g. `image=debian12 sha256=... boot=58.3s nodes=2`."""
    guests = [g for s in everyone for g in s.guests if isinstance(g, dict)]
    mine = next((g for g in own.guests if isinstance(g, dict)), {})
    boots = [g["ready_seconds"] for g in guests
             if isinstance(g.get("ready_seconds"), (int, float))]
    restored = sum(g.get("started") == "snapshot" for g in guests)
    return events.accounting_note(mine.get("image"), mine.get("digest"),
                                  max(boots) if boots else None, nodes=nodes,
                                  restored=(restored, len(guests)))


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
