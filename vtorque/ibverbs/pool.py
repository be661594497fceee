"""Virtual functions handed to guests on this node, and partition keys handed to jobs.

Assignments live in `<state_dir>/.vf-assignments.json` (one entry per function, keyed by
its PCI address), changed only under a node-wide lock: a function never goes to two
guests, and a job gets all the functions it needs or none. The entry is written before
the guest exists and removed when the job is torn down; a job that died without its
epilogue keeps its entries until the reaper (`vtorque reap`) finds the job over and
releases them. Partition keys are cluster-wide, one per job, in the shared state
directory (like guest addresses).

On the hardware, an assigned function gets the job's node and port GUIDs and follows the
physical port's link state (policy Follow); a released one is set Down. MLNX_OFED drivers
take this through `sriov/<N>/{node,port,policy}` files of the physical function; inbox
drivers through `ip link set DEV vf N node_guid .. port_guid .. state auto|disable`,
the upstream netlink interface (the same order sriovnet and pcocc use).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import asdict, dataclass

from vtorque import proc
from vtorque.config import Config
from vtorque.errors import NodeError, ResourceError
from vtorque.files import atomic_write, ensure_trusted_dir, remove_file
from vtorque.ibverbs import VF_LEDGER, guids, sysfs
from vtorque.ledger import Ledger

PKEY_LEDGER = "pkeys.json"
IP = "/sbin/ip"


@dataclass(frozen=True)
class Assignment:
    pci: str              # the virtual function's PCI address
    job_id: str
    rank: int
    hca: str              # its physical function's adapter (mlx5_0)
    vf: int               # its index under that adapter (virtfnN)
    link_layer: str       # InfiniBand | Ethernet
    node_guid: str
    port_guid: str
    since: float = 0.0


def _check_entry(value: dict) -> dict:
    Assignment(pci="x", **value)    # every field present and no other
    return value


def vf_ledger(config: Config) -> Ledger:
    return Ledger(os.path.join(config.state_dir, VF_LEDGER), "virtual function assignments",
                  check=_check_entry, mode=0o600)


def assignments(config: Config) -> list[Assignment]:
    """Every function assigned on this node now, by PCI address."""
    return [Assignment(pci=pci, **entry) for pci, entry in sorted(vf_ledger(config).read().items())]


def assigned_jobs(config: Config) -> set[str]:
    """Jobs holding functions on this node (for the reaper)."""
    return {a.job_id for a in assignments(config)}


def _free(candidates: list[sysfs.Hca], table: dict
          ) -> list[tuple[sysfs.Hca, sysfs.VirtualFunction]]:
    """Unassigned functions, taken round-robin over the adapters (spreading a job's guests
    over every adapter's bandwidth). A function bound to vfio-pci without an entry here
    belongs to something else on this node and is left alone."""
    queues = [[(hca, vf) for vf in hca.vfs
               if vf.pci not in table and vf.driver != "vfio-pci"] for hca in candidates]
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def assign(config: Config, job_id: str, ranks: list[int],
           hcas: list[sysfs.Hca] | None = None) -> list[Assignment]:
    """A function for each guest rank of `job_id` on this node, all or none.

    Raises ResourceError (the job is requeued) when too few are free; entries an earlier,
    interrupted run of the same job left behind are released first.
    """
    ib = config.ibverbs
    if hcas is None:
        hcas = sysfs.discover(ib.sysfs_root)
    candidates = sysfs.usable(hcas, ib.devices)
    by_name = {h.name: h for h in hcas}
    with vf_ledger(config).change() as table:
        _drop(config, table, job_id, by_name)
        free = _free(candidates, table)
        if len(free) < len(ranks):
            total = sum(len(h.vfs) for h in candidates)
            raise ResourceError(f"not enough free SR-IOV virtual functions on this node: "
                                f"{len(ranks)} needed, {len(free)} of {total} free")
        now = round(time.time(), 3)
        chosen = [Assignment(pci=vf.pci, job_id=job_id, rank=rank, hca=hca.name, vf=vf.index,
                             link_layer=hca.link_layer,
                             node_guid=guids.node_guid(ib.guid_prefix, job_id, rank),
                             port_guid=guids.port_guid(ib.guid_prefix, job_id, rank),
                             since=now)
                  for rank, (hca, vf) in zip(ranks, free[:len(ranks)], strict=True)]
        try:
            for a in chosen:
                _configure(ib.sysfs_root, by_name[a.hca], a)
        except NodeError:
            for a in chosen:
                try:
                    _reset(ib.sysfs_root, by_name[a.hca], a)
                except NodeError:
                    pass    # the function stays Down or unconfigured: nobody has it
            raise
        for a in chosen:
            entry = asdict(a)
            del entry["pci"]
            table[a.pci] = entry
    return chosen


def release(config: Config, job_id: str) -> list[str]:
    """Give the job's functions back; returns their PCI addresses. A job without any is
    fine. Entries are dropped even when resetting a function fails (its guest is gone);
    such failures are raised afterwards, once, as NodeError."""
    ib = config.ibverbs
    failures: list[str] = []
    released: list[str] = []
    with vf_ledger(config).change(create=False) as table:
        if not any(entry["job_id"] == job_id for entry in table.values()):
            return []
        by_name = {h.name: h for h in sysfs.discover(ib.sysfs_root)}
        released, failures = _drop(config, table, job_id, by_name)
    if failures:
        raise NodeError("; ".join(failures))
    return released


def _drop(config: Config, table: dict, job_id: str,
          by_name: dict[str, sysfs.Hca]) -> tuple[list[str], list[str]]:
    released, failures = [], []
    for pci, entry in sorted(table.items()):
        if entry["job_id"] != job_id:
            continue
        a = Assignment(pci=pci, **entry)
        hca = by_name.get(a.hca)
        try:
            if hca is not None:
                _reset(config.ibverbs.sysfs_root, hca, a)
        except NodeError as exc:
            failures.append(f"function {pci} of job {job_id}: {exc}")
        del table[pci]
        released.append(pci)
    return released, failures


# --- the hardware side: GUIDs and link policy of one function ---------------------------

def _write_sysfs(path: str, value: str) -> None:
    """Write an existing sysfs attribute; never create a file or follow a link."""
    try:
        # O_TRUNC as the shell's `echo > FILE` does (sysfs ignores it).
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NodeError(f"cannot open {path}: {os.strerror(exc.errno or errno.EIO)}") from None
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise NodeError(f"cannot write {value.strip()!r} to {path}: "
                        f"{os.strerror(exc.errno or errno.EIO)}") from None
    finally:
        os.close(fd)


def _ofed_dir(root: str, hca: sysfs.Hca, vf: int) -> str:
    return os.path.join(sysfs.pci_device_dir(root, hca.pci), "sriov", str(vf))


def _configure(root: str, hca: sysfs.Hca, a: Assignment) -> None:
    if a.link_layer != "InfiniBand":
        return      # RoCE: the function's GIDs follow from its MAC; nothing to set
    if hca.ofed_sriov:
        directory = _ofed_dir(root, hca, a.vf)
        _write_sysfs(os.path.join(directory, "policy"), "Follow\n")
        _write_sysfs(os.path.join(directory, "node"), a.node_guid + "\n")
        _write_sysfs(os.path.join(directory, "port"), a.port_guid + "\n")
    elif hca.netdevs:
        proc.run([IP, "link", "set", "dev", hca.netdevs[0], "vf", str(a.vf),
                  "node_guid", a.node_guid, "port_guid", a.port_guid, "state", "auto"],
                 timeout=10)
    else:
        raise NodeError(f"cannot set the GUIDs of {hca.name} function {a.vf}: no sriov/ "
                        "directory (MLNX_OFED) and no network device for ip link")


def _reset(root: str, hca: sysfs.Hca, a: Assignment) -> None:
    if a.link_layer != "InfiniBand":
        return
    if hca.ofed_sriov:
        _write_sysfs(os.path.join(_ofed_dir(root, hca, a.vf), "policy"), "Down\n")
    elif hca.netdevs:
        proc.run([IP, "link", "set", "dev", hca.netdevs[0], "vf", str(a.vf),
                  "state", "disable"], timeout=10)


# --- partition keys, one per job, cluster-wide -------------------------------------------

def _pkey_ledger(config: Config) -> Ledger:
    return Ledger(os.path.join(config.batch.shared_state_dir, PKEY_LEDGER), "partition keys",
                  check=int)


def allocate_pkey(config: Config, job_id: str, guests: int) -> int | None:
    """The job's partition key (None when the site gives none): allocated by the first
    node to ask, found by the others. Also writes the job's OpenSM partition when
    ibverbs.partitions_dir is set."""
    ib = config.ibverbs
    if not ib.pkey_first:
        return None
    with _pkey_ledger(config).change() as table:
        if job_id in table:
            return table[job_id]
        used = set(table.values())
        key = next((k for k in range(ib.pkey_first, ib.pkey_last + 1) if k not in used), None)
        if key is None:
            raise ResourceError(f"no free partition key in ibverbs.pkey_first..pkey_last "
                                f"(0x{ib.pkey_first:04x}..0x{ib.pkey_last:04x})")
        if ib.partitions_dir:
            ports = [guids.port_guid(ib.guid_prefix, job_id, r) for r in range(guests)]
            ensure_trusted_dir(ib.partitions_dir, 0o755)
            atomic_write(_partition_file(config, job_id),
                         guids.partition_conf(job_id, key, ports), mode=0o644)
        table[job_id] = key
        return key


def _partition_file(config: Config, job_id: str) -> str:
    return os.path.join(config.ibverbs.partitions_dir, guids.partition_name(job_id) + ".conf")


def release_pkey(config: Config, job_id: str) -> None:
    """Return the job's key; a job without one is fine."""
    if not config.ibverbs.pkey_first:
        return
    with _pkey_ledger(config).change(create=False) as table:
        table.pop(job_id, None)
        if config.ibverbs.partitions_dir:
            remove_file(_partition_file(config, job_id))


def pkey_jobs(config: Config) -> set[str]:
    if not config.ibverbs.pkey_first:
        return set()
    return set(_pkey_ledger(config).read())
