"""The node-local life cycle of a job's guests: up, list, down.

up() checks the request against this node, decides every guest (spec), makes the files,
starts the guests in parallel as transient libvirt domains tagged with the job id, and
waits until each answers. Any failure rolls back with down(), the same code the epilogue
runs. down() finds guests by their libvirt tag and by the journal, destroys them
("already gone" is success), removes every file of the job, and keeps going past single
failures, reporting all of them at the end. Running it twice, or for a job that never
started, succeeds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vtorque import node
from vtorque.config import Config
from vtorque.errors import (
    HypervisorError,
    ImageError,
    NodeError,
    ResourceError,
    TeardownError,
    Unsupported,
    VtorqueError,
)
from vtorque.files import ensure_trusted_dir, flock_within, make_dir, remove_file, remove_tree
from vtorque.images import Catalog, Image
from vtorque.journal import JobPaths, Journal
from vtorque.request import VmRequest, check_fits_node, check_image_matches, image_name
from vtorque.vm import disks, hugepage_reservations, identity, numa, readiness
from vtorque.vm.addresses import AddressBlock
from vtorque.vm.host import Host
from vtorque.vm.render import domain_xml, network_filters
from vtorque.vm.seed import SeedExtras, seed_documents, write_seed_iso
from vtorque.vm.shares import ShareSpec
from vtorque.vm.spec import GuestSpec, build_guest_specs

LOCK_TIMEOUT = 30.0
# Per guest on-disk need beyond the overlay's growth: seed, console log, qcow2 metadata.
_FIXED_MIB_PER_GUEST = 16


@dataclass(frozen=True)
class Guest:
    job_id: str
    rank: int
    name: str
    hostname: str
    state: str
    mac: str | None = None
    ready_seconds: float | None = None
    address: str | None = None
    started: str = "boot"       # boot | snapshot (restored from the node's template)


@dataclass
class UpResult:
    job_id: str
    guests: list[Guest] = field(default_factory=list)
    seconds: float = 0.0
    image_kind: str = "linux"
    rdma: str | None = None          # the RDMA transport the guests got here
    image_name: str | None = None
    image_digest: str | None = None  # sha256 of the image's disk (or kernel)
    # Why no guest here started from a snapshot template (None: they did, or were not
    # meant to: the image does not opt in, or snapshots are off).
    snapshot_note: str | None = None

    @property
    def restored(self) -> int:
        return sum(g.started == "snapshot" for g in self.guests)


def paths_for(job_id: str, config: Config) -> JobPaths:
    return JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)


@contextlib.contextmanager
def _job_lock(paths: JobPaths):
    """Serialize up and down of one job on this node.

    The lock file goes away with the job (no lock of a finished job is left): it is
    unlinked while still held whenever the job has no state left. A waiter that then
    wins the lock on the unlinked file notices (the path no longer names its inode) and
    starts over on a fresh file, so two holders can never coexist.
    """
    # The state directory first, so that a sticky or shared one is refused as a parent.
    ensure_trusted_dir(os.path.dirname(os.path.dirname(paths.lock)), 0o755)
    ensure_trusted_dir(os.path.dirname(paths.lock), 0o700)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            if not flock_within(fd, max(deadline - time.monotonic(), 0.0)):
                raise NodeError(f"job {paths.job_id} is locked by another vtorque process "
                                f"on this node for more than {LOCK_TIMEOUT:g} s")
            try:
                same = os.stat(paths.lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue  # the holder before us removed the file: lock the new one
            try:
                yield
            finally:
                if not os.path.lexists(paths.job_dir):
                    remove_file(paths.lock)
            return
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Plan:
    """A request checked against this node, before anything is made for it."""
    job_id: str
    request: VmRequest
    image: Image
    placements: tuple[numa.GuestPlacement, ...] | None = None   # None: numa's defaults


def check(job_id: str, request: VmRequest, config: Config,
          catalog: Catalog | None = None, *, job_cores: tuple[int, ...] | None = None
          ) -> Plan:
    """Everything that can refuse the request on this node without making anything: the
    image (authorized, matching the request), the node's cores and memory, free space,
    the huge pages. `job_cores`: the host cores the batch system gave the job here (the
    guests run on those, and on their NUMA nodes)."""
    catalog = catalog or Catalog(config.image_pool,
                                 checksum_cache=os.path.join(config.state_dir, ".checksums"))
    image = catalog.authorize(image_name(request, catalog))
    check_image_matches(request, image, config)
    if image.kind == "osv":
        if request.disk_mib:
            raise Unsupported(f"image {image.name!r} is an OSv image: OSv mounts no data "
                              "disk (-vm disk); leave it out")
        if config.network.mode != "none" and image.kernel is None:
            raise ImageError(f"image {image.name!r}: an OSv guest learns its address only "
                             "from its command line, so its descriptor needs kernel and "
                             "cmdline (direct kernel boot)")
    facts = node.facts()
    check_fits_node(request, facts.cores, facts.memory_mib, config)
    _check_free_space(request, config)
    topology = None
    if job_cores is not None or request.vcpu_pinning:
        topology = numa.read_topology(config.numa.sysfs_root)
    placements = numa.guest_placements(config, request, job_cores, topology)
    hugepage_reservations.check(config, job_id, request, placements, _node(config))
    return Plan(job_id, request, image, placements)


def up(job_id: str, request: VmRequest, config: Config, *, catalog: Catalog | None = None,
       job_cores: tuple[int, ...] | None = None, **start_args) -> UpResult:
    """check() then start(): for callers that have nothing to do in between."""
    return start(check(job_id, request, config, catalog, job_cores=job_cores), config,
                 **start_args)


def start(plan: Plan, config: Config, *, first_rank: int = 0,
       addresses: AddressBlock | None = None,
       extras: Callable[[GuestSpec], SeedExtras] | None = None,
       rdma: str | None = None, functions: dict[int, str] | None = None,
       owner: identity.Identity | None = None,
       shares: tuple[ShareSpec, ...] = ()) -> UpResult:
    """Start this node's guests of the checked plan and wait until all answer.

    `rdma` is the transport decided for the job here; `functions` maps a guest rank to
    the PCI address of the virtual function it gets (assigned by the caller). With
    `owner`, QEMU runs under the job owner's identity and the guests mount `shares`;
    without, as qemu_user/qemu_group with no shares. The guests run where the plan
    placed them; their huge pages are held from here until teardown."""
    started = time.monotonic()
    job_id, request, image = plan.job_id, plan.request, plan.image
    paths = paths_for(job_id, config)
    qemu = owner or identity.of_config(config)
    tokens = [secrets.token_hex(8) for _ in range(request.vms_per_node)]
    domain_type = node.domain_type(config.hypervisor)
    if domain_type == "kvm":
        problem = identity.kvm_problem(qemu)
        if problem:
            raise NodeError(problem)
    shares = identity.usable_shares(qemu, shares if owner else (), image, config)
    try:
        with _job_lock(paths), Host(config.libvirt_uri) as host:
            if host.tagged_domains(job_id, _node(config)) or os.path.lexists(paths.job_dir):
                # Left over from a killed prologue or a requeue: clear it, start afresh.
                _teardown(paths, host, config)
            try:
                placements = plan.placements or numa.guest_placements(config, request,
                                                                      None, None)
                hugepage_reservations.reserve(config, job_id, request, placements,
                                              _node(config))
                specs = build_guest_specs(paths=paths, request=request, image=image,
                                          config=config, domain_type=domain_type,
                                          first_rank=first_rank, tokens=tokens,
                                          qemu_uid=qemu.uid, qemu_gid=qemu.gid,
                                          addresses=addresses, node=_node(config),
                                          rdma=rdma, functions=functions or {},
                                          shares=shares,
                                          owner=(qemu.uid, qemu.gid) if owner else None,
                                          placements=placements)
                return _provision(paths, specs, host, config, started, extras,
                                  (request.vm_prologue, request.vm_epilogue), image)
            except BaseException as exc:
                try:
                    _teardown(paths, host, config)
                except VtorqueError as cleanup_exc:
                    if isinstance(exc, VtorqueError):
                        exc.message = f"{exc}; rollback also failed: {cleanup_exc}"
                raise
    except OSError as exc:     # the lock, the job directory or the journal: disk full, ...
        raise ResourceError(f"cannot write the state of job {job_id} on this node: "
                            f"{exc.filename or config.state_dir}: {exc.strerror or exc}"
                            ) from None


def _provision(paths: JobPaths, specs: list[GuestSpec], host: Host, config: Config,
               started: float, extras: Callable[[GuestSpec], SeedExtras] | None,
               vm_scripts: tuple[str | None, str | None], image: Image) -> UpResult:
    ensure_trusted_dir(config.state_dir, 0o755)
    make_dir(paths.job_dir, 0o710, gid=specs[0].qemu_gid)
    if any(disk.path.startswith(paths.ramdisk_dir + "/")
           for spec in specs for disk in (spec.overlay, spec.scratch) if disk):
        ensure_trusted_dir(config.ramdisk_dir, 0o755)
        make_dir(paths.ramdisk_dir, 0o710, gid=specs[0].qemu_gid)
    journal = Journal(paths.journal)
    journal.record("job-start", job_id=paths.job_id, guests=[s.name for s in specs],
                   qemu_uid=specs[0].qemu_uid, shares=[x.source for x in specs[0].shares],
                   vm_prologue=vm_scripts[0], vm_epilogue=vm_scripts[1])
    if any(spec.nic and spec.nic.peers for spec in specs):
        host.ensure_filters(network_filters())
    timeouts = config.timeouts
    # Here, not at the top: down() (every VM job's epilogue) needs none of it.
    from vtorque.vm import restore, snapshot
    template, note = restore.template_or_reason(specs[0], image, host, config)
    started_from: dict[str, str] = {}

    def start_one(spec: GuestSpec) -> None:
        # Write-ahead: the journal names the domain before it can exist.
        journal.record("guest-starting", domain=spec.name, rank=spec.rank)
        made = disks.create_disks(spec, timeout=timeouts.provision)
        if spec.seed is not None:
            documents = seed_documents(spec, extras(spec) if extras else None)
            if template is not None:
                documents.update(snapshot.restore_documents(spec))
            write_seed_iso(spec.seed.path, documents, uid=spec.qemu_uid, gid=spec.qemu_gid)
            made.append(spec.seed.path)
        begun = time.monotonic()
        uuid = (restore.try_restore(spec, image, template, host, config)
                if template is not None else None)
        started_from[spec.name] = "snapshot" if uuid else "boot"
        if uuid is None:
            uuid = host.start_transient(domain_xml(spec))
        journal.record("guest-started", domain=spec.name, rank=spec.rank, uuid=uuid,
                       files=made, qemu_pid=host.qemu_pid(spec.name),
                       start=started_from[spec.name],
                       seconds=round(time.monotonic() - begun, 3))

    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        errors = [f.exception() for f in [pool.submit(start_one, s) for s in specs]]
    failures = [e for e in errors if e is not None]
    if failures:
        first = failures[0]
        raise first if isinstance(first, VtorqueError) else HypervisorError(
            f"starting guests failed: {first}")
    if specs[0].hugepage_kib:
        hugepage_reservations.mark_started(config, paths.job_id)
    # QEMU and qemu-img opened the image's files by path: refuse guests of a file that
    # was replaced or rewritten after the catalog verified it.
    Catalog(config.image_pool).verify_unchanged(image)
    remaining = timeouts.provision - (time.monotonic() - started)
    ready = readiness.wait_ready(specs, min(timeouts.guest_ready, max(remaining, 1.0)),
                                 host.state)
    for spec in specs:
        if spec.ready_url:       # OSv: the host name comes through its REST API
            readiness.osv_set_hostname(spec)
    journal.record("job-ready", seconds=round(time.monotonic() - started, 3))
    guests = [Guest(s.job_id, s.rank, s.name, s.hostname, "running",
                    s.nic.mac if s.nic else None, round(ready[s.name], 3),
                    s.nic.address if s.nic else None, started_from.get(s.name, "boot"))
              for s in specs]
    if template is not None and any(g.started == "boot" for g in guests):
        note = "a restore from the node's template failed (see the node's log)"
    return UpResult(paths.job_id, guests, time.monotonic() - started, specs[0].kind,
                    specs[0].rdma, specs[0].image_name, specs[0].image_digest, note)


def down(job_id: str, config: Config) -> list[str]:
    """Destroy every guest and remove every file of `job_id` on this node.

    Returns the domain names destroyed. Raises TeardownError listing what could not be
    removed; everything else is still removed. A job with nothing on this node costs one
    look at libvirt and creates nothing (not even its lock).
    """
    paths = paths_for(job_id, config)
    if not any(os.path.lexists(p) for p in (paths.job_dir, paths.ramdisk_dir,
                                            paths.user_dir, paths.lock)) \
            and job_id not in hugepage_reservations.holding_jobs(config):
        with Host(config.libvirt_uri) as host:
            if not host.tagged_domains(job_id, _node(config)):
                return []
    with _job_lock(paths), Host(config.libvirt_uri) as host:
        return _teardown(paths, host, config)


def _teardown(paths: JobPaths, host: Host, config: Config) -> list[str]:
    failures: list[str] = []
    names: list[str] = []
    try:
        names = [d.name for d in host.tagged_domains(paths.job_id, _node(config))]
    except HypervisorError as exc:
        failures.append(str(exc))
    deadline = time.monotonic() + config.timeouts.teardown
    destroyed = []
    for name in names:
        try:
            if host.state(name) is not None:
                destroyed.append(name)
            host.destroy(name)
        except HypervisorError as exc:
            failures.append(str(exc))
    # libvirt's destroy returns after QEMU has exited; check anyway so that a stuck QEMU
    # is reported, not silently left holding the job's disks. Each guest is looked at at
    # least once, however long the destroys took.
    for name in names:
        while True:
            try:
                gone = host.state(name) is None
            except HypervisorError as exc:
                failures.append(f"cannot tell whether guest {name} is gone: {exc}")
                break
            if gone:
                break
            if time.monotonic() >= deadline:
                failures.append(f"guest {name} still exists after destroy")
                break
            time.sleep(0.05)
    if failures:
        # Keep the journal and files: a later teardown (or the reaper) must still find
        # the guests that would not go away.
        raise TeardownError(paths.job_id, failures)
    for directory in (paths.user_dir, paths.job_dir, paths.ramdisk_dir):
        try:
            remove_tree(directory)
        except OSError as exc:
            failures.append(f"cannot remove {directory}: {exc.strerror}")
    try:
        hugepage_reservations.release(config, paths.job_id)
    except NodeError as exc:
        failures.append(str(exc))
    if failures:
        raise TeardownError(paths.job_id, failures)
    return destroyed


def list_guests(config: Config, job_id: str | None = None) -> list[Guest]:
    """Every vtorque guest on this node (of one job when given), found by its tag."""
    with Host(config.libvirt_uri) as host:
        return [Guest(d.job_id, d.rank, d.name, "", d.state)
                for d in host.tagged_domains(job_id, _node(config))]


def _check_free_space(request: VmRequest, config: Config) -> None:
    where = config.ramdisk_dir if request.fs_type == "ramdisk" else config.state_dir
    need = config.min_free_space + request.vms_per_node * _FIXED_MIB_PER_GUEST
    free = node.free_space_mib(where)
    if free < need:
        raise ResourceError(f"not enough free space for guest disks in {where}: {free} MiB "
                            f"free, {need} MiB needed (min_free_space plus per-guest files)")


def _node(config: Config) -> str:
    return node.node_name(config.node_name)


def qemu_ids(config: Config) -> tuple[int, int]:
    """uid and gid QEMU runs as without a job owner (config keys qemu_user, qemu_group)."""
    qemu = identity.of_config(config)
    return qemu.uid, qemu.gid
