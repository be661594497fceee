"""A job's guests on this node, wired into the job: the glue between vm/ (guests) and
mpi/ (addresses in hostfiles, SSH trust). The prologues and `vtorque vm up` both come
through here, so a guest started by hand is the same as one started by a batch job.
"""

from __future__ import annotations

import os
import pwd

from vtorque import guest_layout
from vtorque.config import Config
from vtorque.errors import NodeError
from vtorque.files import atomic_write, make_dir, remove_tree
from vtorque.journal import JobPaths
from vtorque.mpi import hostfile, sshkeys
from vtorque.request import VmRequest
from vtorque.vm import addresses as addr
from vtorque.vm import identity, lifecycle, shares
from vtorque.vm.seed import SeedExtras
from vtorque.vm.shares import ShareSpec
from vtorque.vm.spec import GuestSpec, hostname


def job_guests(job_id: str, request: VmRequest, node_count: int,
               block: addr.AddressBlock | None, secret: bytes | None,
               keys: sshkeys.KeyScope | None = None) -> list[hostfile.GuestEntry]:
    """Every guest of the job, on every node, derived from the job alone (host keys: with
    the site secret and the job's key scope)."""
    total = node_count * request.vms_per_node
    pinned = secret is not None and keys is not None
    return [hostfile.GuestEntry(
        rank=rank, hostname=hostname(job_id, rank),
        address=block.address(rank) if block else None, slots=request.vcpus,
        host_key=sshkeys.host_key(secret, keys, rank).public if pinned else None)
        for rank in range(total)]


def job_shares(config: Config, user: str, workdir: str | None) -> tuple[ShareSpec, ...]:
    """The directories the job's guests see at the node's paths: the job's working
    directory and the owner's home (symlinks resolved, as the node sees them), and the
    site's shares (batch.shares). Unsupported when the working directory cannot be a
    mount point in a guest."""
    home = pwd.getpwnam(user).pw_dir
    return shares.plan_shares(workdir=os.path.realpath(workdir) if workdir else None,
                              home=os.path.realpath(home) if home else None,
                              site=config.batch.shares)


def bring_up(job_id: str, request: VmRequest, config: Config, *, user: str | None,
             node_index: int = 0, node_count: int = 1, node: str | None = None,
             run: int = 0, workdir: str | None = None,
             keys: sshkeys.KeyScope | None = None,
             job_cores: tuple[int, ...] | None = None
             ) -> tuple[lifecycle.UpResult, list[hostfile.GuestEntry]]:
    """Start this node's guests of the job, each knowing the whole job: addresses, hosts,
    hostfiles and (when `user` is given) the job's SSH trust (`keys`: the one job the keys
    belong to), QEMU under the owner's identity and the job's shares (`workdir`: the job's
    working directory); the guests run on `job_cores` when given (the cores the batch
    system gave the job here) and on those cores' NUMA nodes.

    Order matters: everything that can refuse the request is checked before the job's
    job-wide pieces are taken (a refused request holds no addresses), and this node
    joins the job (its `starting` status) before its first guest exists."""
    from vtorque.cluster import jobwide
    from vtorque.node import node_name
    if user and keys is None:
        raise NodeError(f"job {job_id}: no key scope for the owner's SSH trust")
    plan = lifecycle.check(job_id, request, config, job_cores=job_cores)
    owner = identity.of_owner(user) if user else None
    job_dirs = job_shares(config, user, workdir) if user else ()
    total = node_count * request.vms_per_node
    block = jobwide.join(config, job_id, node or node_name(config.node_name), run, total)
    rdma, rdma_env, functions = rdma_plan(job_id, request, config, total,
                                          node_index * request.vms_per_node)
    secret = sshkeys.read_secret(config.secret_file) if user else None
    guests = job_guests(job_id, request, node_count, block, secret, keys)
    hosts = hostfile.hosts_lines(guests)
    hosts_file = hostfile.openmpi_hostfile(guests)
    nodes_file = hostfile.nodefile(guests)
    user_key = sshkeys.user_key(secret, keys) if secret and keys else None
    authorized = ((user, user_key.public),) if user_key else ()
    known = hostfile.known_hosts(guests)

    account = owner_account(user) if user_key else {}
    client = hostfile.ssh_config(None, guest_layout.USER_KEY, guest_layout.KNOWN_HOSTS)
    setup, device = soft_roce_setup(rdma)

    def extras(spec: GuestSpec) -> SeedExtras:
        host = sshkeys.host_key(secret, keys, spec.rank) if secret and keys else None
        return SeedExtras(hosts=hosts, host_key_private=host.private_openssh if host else None,
                          host_key_public=host.public if host else None,
                          authorized_keys=authorized, hostfile=hosts_file,
                          nodefile=nodes_file, **account,
                          user_key_private=user_key.private_openssh if user_key else None,
                          known_hosts=known, ssh_client_config=client,
                          rdma_setup=setup, rdma_device=device,
                          env=(("PBS_NODEFILE", guest_layout.NODEFILE),) + rdma_env)

    try:
        result = lifecycle.start(plan, config, first_rank=node_index * request.vms_per_node,
                                 addresses=block, extras=extras, rdma=rdma,
                                 functions=functions, owner=owner, shares=job_dirs)
    except BaseException:
        if functions:
            from vtorque.epilogue.teardown import release_functions
            release_functions(job_id, config)
        raise
    return result, guests


def owner_account(user: str) -> dict:
    """The job owner's account as the node knows it, for the guests to create alike: the
    same uid, gid and home, so files the job writes in shared directories are the
    owner's."""
    import grp
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise NodeError(f"the job's owner {user!r} has no account on this node") from None
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = None
    return {"user": user, "user_uid": entry.pw_uid, "user_gid": entry.pw_gid,
            "user_group": group, "user_home": entry.pw_dir}


def soft_roce_setup(rdma: str | None) -> tuple[tuple[tuple[str, ...], ...], str | None]:
    """What a cloud guest runs to create its Soft-RoCE device, and the device's name."""
    from vtorque.ibverbs import transport
    if rdma != transport.SOFT_ROCE:
        return (), None
    return tuple(tuple(c) for c in transport.RXE_COMMANDS), transport.RXE_DEVICE


def rdma_plan(job_id: str, request: VmRequest, config: Config, guests: int,
              first_rank: int) -> tuple[str | None, tuple[tuple[str, str], ...],
                                        dict[int, str]]:
    """The job's RDMA transport on this node, the guests' environment for it and, with
    SR-IOV, the virtual function of each of this node's guest ranks (assigned now, all or
    none) and the job's partition key (when the site hands them out)."""
    if not request.vrdma:
        return None, (), {}
    from vtorque.ibverbs import pool, sysfs, transport
    hcas = sysfs.discover(config.ibverbs.sysfs_root)
    rdma = transport.choose(True, hcas, config.ibverbs)
    pkey = pool.allocate_pkey(config, job_id, guests) if rdma == transport.SRIOV else None
    functions: dict[int, str] = {}
    if rdma == transport.SRIOV:
        ranks = list(range(first_rank, first_rank + request.vms_per_node))
        functions = {a.rank: a.pci for a in pool.assign(config, job_id, ranks, hcas)}
    return rdma, transport.job_environment(rdma, config.ibverbs.transport, pkey), functions


def vm_scripts(paths: JobPaths) -> dict[str, str]:
    """The job's vm_prologue and vm_epilogue as the job shell reads them (`vm-prologue`,
    `vm-epilogue`: the guest path, or empty), from what this node's start of the job
    recorded in its journal (root's, in the job's root-owned directory)."""
    from vtorque.journal import Journal
    found = {"vm-prologue": "", "vm-epilogue": ""}
    for entry in Journal(paths.journal).entries(owner=0):
        if entry.get("event") == "job-start":
            for key, name in (("vm_prologue", "vm-prologue"), ("vm_epilogue", "vm-epilogue")):
                value = entry.get(key)
                found[name] = value + "\n" if isinstance(value, str) and value else ""
    return found


def write_user_files(job_id: str, config: Config, user: str,
                     guests: list[hostfile.GuestEntry], keys: sshkeys.KeyScope,
                     guest_kind: str = "linux") -> str:
    """The job owner's files on the mother superior: the job's private key, the guests'
    pinned host keys, an ssh_config, the hostfiles. A directory 0700 owned by the user,
    filled while still root-owned so nothing the user plants can redirect a write."""
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    account = pwd.getpwnam(user)
    secret = sshkeys.read_secret(config.secret_file)
    remove_tree(paths.user_dir)
    make_dir(paths.user_dir, 0o700)
    directory = paths.user_dir
    files = {
        "id_ed25519": sshkeys.user_key(secret, keys).private_openssh,
        "known_hosts": hostfile.known_hosts(guests),
        "ssh_config": hostfile.ssh_config(user, os.path.join(directory, "id_ed25519"),
                                          os.path.join(directory, "known_hosts"), guests),
        "hostfile": hostfile.openmpi_hostfile(guests),
        "nodefile": hostfile.nodefile(guests),
        "rank0": guests[0].hostname + "\n",
        "rank0-address": (guests[0].address or "") + "\n",
        "guest-kind": guest_kind + "\n",      # osv: the job runs through OSv's REST API
        # Every guest, for the job's vm_prologue and vm_epilogue: "HOSTNAME ADDRESS".
        "guests": "".join(f"{g.hostname} {g.address or '-'}\n" for g in guests),
        **vm_scripts(paths),
    }
    for name, text in files.items():
        atomic_write(os.path.join(directory, name), text, mode=0o600)
    for name in files:
        os.chown(os.path.join(directory, name), account.pw_uid, account.pw_gid,
                 follow_symlinks=False)
    os.chown(directory, account.pw_uid, account.pw_gid, follow_symlinks=False)
    return directory
