"""Decide everything about a job's guests on one node, as frozen specs (no I/O here).

Templates render these specs and decide nothing; the lifecycle applies them. Linux,
direct-kernel and OSv guests differ by the defaults and template chosen here, not by
branches elsewhere.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass

from vtorque.config import Config
from vtorque.images import Image
from vtorque.journal import JobPaths
from vtorque.request import VmRequest
from vtorque.vm.addresses import AddressBlock
from vtorque.vm.numa import Cell, GuestPlacement, guest_placements
from vtorque.vm.shares import ShareSpec

READY_PREFIX = "vtorque-ready"
HOSTROOT_TAG = "hostroot"
# Rank 0's scratch disk (request key disk): an ext4 file system made on the node, found in
# the guest by this virtio serial and mounted at DATA_MOUNT.
DATA_SERIAL = "vtorque-data"
DATA_MOUNT = "/data"
DATA_LABEL = "vtorque-data"
OSV_API_PORT = 8000
# What QEMU itself needs locked beyond the guest's RAM when a guest has VFIO devices
# (libvirt's own default when it sizes the limit).
VFIO_OVERHEAD_MIB = 1024
_PCI = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")
# Our <metadata> namespace: every domain vtorque starts carries <vt:job id=... rank=...>.
METADATA_NS = "urn:x-vtorque:job:1"


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str          # qcow2 | raw
    target: str          # vda, vdb, ...
    readonly: bool = False
    cache: str | None = None        # QEMU's cache mode; None: QEMU's default
    discard: str | None = None      # "unmap": the guest's TRIM frees overlay space
    serial: str | None = None       # the virtio disk's serial, as the guest sees it


@dataclass(frozen=True)
class NicSpec:
    kind: str            # network | bridge
    source: str
    mac: str
    mtu: int                        # always applied, as the site configured it
    address: str | None = None      # static IPv4 address (None: DHCP)
    prefix: int | None = None
    gateway: str | None = None
    peers: tuple[str, ...] = ()     # isolation: the only IPv4 peers (empty: no filter)


@dataclass(frozen=True)
class GuestSpec:
    """One guest, fully decided."""
    job_id: str
    rank: int
    node: str             # the node it runs on (tagged, so teardown touches only its own)
    name: str             # libvirt domain name, unique on the node
    hostname: str
    kind: str             # linux (boots its disk) | kernel (direct boot) | osv
    title: str            # the domain's <title>
    domain_type: str      # kvm | qemu
    arch: str             # x86_64
    machine: str          # q35 | pc
    cpu_mode: str | None  # host-passthrough under KVM; None: the emulator's default CPU
    vcpus: int
    memory_mib: int
    cpuset: tuple[int, ...]          # host cores, one per vCPU when pinned; () = unpinned
    kernel: str | None
    initrd: str | None
    cmdline: str | None
    overlay: DiskSpec | None         # the guest's root disk (qcow2 overlay on the image)
    base_image: str | None           # the overlay's backing file
    base_format: str | None
    scratch: DiskSpec | None         # rank 0's scratch disk (request key disk): raw ext4
    scratch_mib: int
    seed: DiskSpec | None            # cloud-init NoCloud seed
    nic: NicSpec | None
    console_log: str
    ready_token: str
    qemu_uid: int                    # QEMU's identity (the job owner's, vm/identity.py)
    qemu_gid: int
    image_name: str
    image_digest: str | None
    distro: str
    host_share: bool = False         # 9p share of the node's root, read-only, tag hostroot
    # OSv prints no ready line of ours: it is ready when its REST API answers here.
    ready_url: str | None = None
    rdma: str | None = None          # sriov | soft-roce | None
    hostdevs: tuple[str, ...] = ()   # PCI addresses of functions passed through (VFIO)
    rng: bool = True                 # a virtio-rng device fed by the host's /dev/urandom
    shares: tuple[ShareSpec, ...] = ()   # host directories at the same paths (9p)
    # The job owner's uid and gid: they own /data (None without an owner: root does).
    owner_uid: int | None = None
    owner_gid: int | None = None
    # NUMA placement and huge pages (vm/numa.py); all empty: the kernel places the guest.
    vcpu_sets: tuple[str, ...] = ()       # unpinned: each vCPU's host cores (a cpulist)
    numa_nodeset: str | None = None       # host NUMA nodes holding its memory, strict
    numa_cells: tuple[Cell, ...] = ()     # its NUMA topology, mirroring the host nodes
    hugepage_kib: int = 0                 # huge page size backing its RAM (0: none)
    # A snapshot template (vm/snapshot.py): a VM generation ID, which a restored guest's
    # kernel reseeds on, and spare PCIe ports for the devices a restore hot-plugs.
    genid: bool = False
    hotplug_ports: int = 0
    template_key: str | None = None  # set on the template guest itself: its shape's key

    @property
    def hostdev_addresses(self) -> tuple[tuple[str, str, str, str], ...]:
        """(domain, bus, slot, function) in hex of each passed-through function."""
        out = []
        for pci in self.hostdevs:
            match = _PCI.fullmatch(pci)
            if not match:
                raise ValueError(f"not a PCI address: {pci!r}")
            out.append(match.groups())
        return tuple(out)

    @property
    def locked_memory_mib(self) -> int:
        """VFIO pins all guest memory: lock it, with QEMU's overhead as the hard limit."""
        return self.memory_mib + VFIO_OVERHEAD_MIB if self.hostdevs else 0

    @property
    def ready_line(self) -> str:
        return f"{READY_PREFIX} {self.ready_token}"


def mac_address(prefix: str, job_id: str, rank: int) -> str:
    """A MAC derived from the job and rank alone: no polling needed to know it."""
    digest = hashlib.sha256(f"{job_id}\0{rank}".encode()).digest()
    return prefix + "".join(f":{b:02x}" for b in digest[:3])


def hostname(job_id: str, rank: int) -> str:
    """vt<job number>-<rank>: short, DNS-safe, unique within the job."""
    digits = re.match(r"[0-9]*", job_id).group(0)[:12]
    if not digits:
        digits = hashlib.sha256(job_id.encode()).hexdigest()[:8]
    return f"vt{digits}-{rank}"


def domain_name(paths: JobPaths, rank: int) -> str:
    return f"vtorque-{paths.key}-{rank}"


# What differs between the kinds of guest, decided here once (virtinst's set_defaults).
# OSv gets machine pc: its tested machine, and q35 gives it nothing (no passthrough for
# OSv) while its boot hangs there whenever an AHCI CD-ROM is attached; its disk is read
# without the page cache. Linux guests may TRIM their overlays. OSv mounts no shares (it
# has no 9p client) and has no cloud-init.
@dataclass(frozen=True)
class KindDefaults:
    machine: str | None          # None: the site's machine_type
    title_suffix: str
    disk_cache: str | None
    disk_discard: str | None
    seed: bool                   # a cloud-init NoCloud seed disk
    rng: bool
    shares: bool                 # mounts the job's shares


KIND_DEFAULTS = {
    "linux": KindDefaults(None, "", None, "unmap", True, True, True),
    "kernel": KindDefaults(None, "", None, "unmap", True, True, True),
    "osv": KindDefaults("pc", " (OSv)", "none", None, False, False, False),
}


def build_guest_specs(*, paths: JobPaths, request: VmRequest, image: Image, config: Config,
                      domain_type: str, first_rank: int, tokens: list[str],
                      qemu_uid: int, qemu_gid: int,
                      addresses: AddressBlock | None = None,
                      node: str = "", rdma: str | None = None,
                      functions: dict[int, str] | None = None,
                      shares: tuple[ShareSpec, ...] = (),
                      owner: tuple[int, int] | None = None,
                      placements: tuple[GuestPlacement, ...] | None = None
                      ) -> list[GuestSpec]:
    """Specs for the `request.vms_per_node` guests of this node, ranks from `first_rank`.

    `rdma` is the job's transport here; `functions` maps a rank to the PCI address of the
    virtual function it gets (SR-IOV); `shares` are the job's host directories (every
    guest mounts them); `owner` the job owner's (uid, gid); `placements` where each guest
    runs on the node (numa.guest_placements; None: no batch allocation and no topology
    known, pinned guests take the cores after the host's reserve)."""
    functions = functions or {}
    if placements is None:
        placements = guest_placements(config, request, None, None)
    if len(tokens) != request.vms_per_node:
        raise ValueError("one ready token per guest is needed")
    kind = KIND_DEFAULTS[image.kind]
    disk_dir = paths.ramdisk_dir if request.fs_type == "ramdisk" else paths.job_dir
    net = config.network
    specs = []
    for index in range(request.vms_per_node):
        rank = first_rank + index
        name = domain_name(paths, rank)
        host = hostname(paths.job_id, rank)
        overlay = None
        if image.disk is not None:
            overlay = DiskSpec(os.path.join(disk_dir, f"{name}.qcow2"), "qcow2", "vda",
                               cache=kind.disk_cache, discard=kind.disk_discard)
        scratch = None
        if rank == 0 and request.disk_mib:
            # Raw: the node makes the file system in it before the guest starts.
            scratch = DiskSpec(os.path.join(disk_dir, f"{name}.data.raw"), "raw",
                               "vdb" if overlay else "vda", cache=kind.disk_cache,
                               discard=kind.disk_discard, serial=DATA_SERIAL)
        seed = None
        if kind.seed:
            used = [d.target for d in (overlay, scratch) if d]
            target = next(t for t in ("vda", "vdb", "vdc") if t not in used)
            seed = DiskSpec(os.path.join(paths.job_dir, f"{name}.seed.iso"), "raw", target,
                            readonly=True)
        nic = None
        if net.mode != "none":
            source = net.name if net.mode == "network" else net.bridge
            mac = mac_address(net.mac_prefix, paths.job_id, rank)
            if addresses is not None:
                peers: tuple[str, ...] = ()
                if net.isolate_jobs:
                    peers = tuple(addresses.address(r) for r in range(addresses.size)) + \
                        ((addresses.gateway,) if addresses.gateway else ())
                nic = NicSpec(net.mode, source, mac, net.mtu, addresses.address(rank),
                              addresses.prefix, addresses.gateway, peers)
            else:
                nic = NicSpec(net.mode, source, mac, net.mtu)
        cmdline = None
        if image.kind == "kernel":
            cmdline = _kernel_cmdline(image, host, tokens[index], nic, rdma)
        elif image.kind == "osv" and image.kernel is not None:
            cmdline = osv_cmdline(image.cmdline, nic)
        hostdevs = (functions[rank],) if rank in functions else ()
        placement = placements[index]
        specs.append(GuestSpec(
            job_id=paths.job_id, rank=rank, node=node, name=name, hostname=host,
            kind=image.kind, title=f"vtorque job {paths.job_id} rank {rank}{kind.title_suffix}",
            domain_type=domain_type, arch=request.arch,
            # PCIe passthrough wants a PCIe machine, whatever the site's default.
            machine="q35" if hostdevs else (kind.machine or config.machine_type),
            cpu_mode="host-passthrough" if domain_type == "kvm" else None,
            vcpus=request.vcpus, memory_mib=request.ram_mib,
            cpuset=placement.cores if placement.pinned else (),
            kernel=image.kernel.path if image.kernel else None,
            initrd=image.initrd.path if image.initrd else None,
            cmdline=cmdline, overlay=overlay,
            base_image=image.disk.path if image.disk else None,
            base_format=image.disk.format if image.disk else None,
            scratch=scratch, scratch_mib=request.disk_mib if scratch else 0,
            seed=seed, nic=nic,
            console_log=os.path.join(paths.job_dir, f"{name}.console.log"),
            ready_token=tokens[index], qemu_uid=qemu_uid, qemu_gid=qemu_gid,
            image_name=image.name, image_digest=_digest(image), distro=image.distro,
            host_share=image.host_share,
            ready_url=(f"http://{nic.address}:{OSV_API_PORT}/os/version"
                       if image.kind == "osv" and nic and nic.address else None),
            rdma=rdma, hostdevs=hostdevs, rng=kind.rng,
            shares=shares if kind.shares else (),
            owner_uid=owner[0] if owner else None, owner_gid=owner[1] if owner else None,
            vcpu_sets=placement.vcpu_sets, numa_nodeset=placement.memory_nodeset,
            numa_cells=placement.guest_cells, hugepage_kib=request.hugepage_mib * 1024))
    return specs


def _digest(image: Image) -> str | None:
    """What identifies the image's content: its disk's sha256, else its kernel's."""
    main = image.disk or image.kernel
    return main.sha256 if main else None


def osv_cmdline(image_cmdline: str, nic: NicSpec | None) -> str:
    """An OSv guest's command line: the image's loader options, this guest's address
    (OSv has no other way to learn a static one, and without it waits for DHCP forever),
    then the image's command. Loader options come before the first word without `-`."""
    words = image_cmdline.split()
    cut = next((i for i, w in enumerate(words) if not w.startswith("-")), len(words))
    extra = []
    if nic is not None and nic.address:
        mask = ipaddress.IPv4Network(f"0.0.0.0/{nic.prefix}").netmask
        extra.append(f"--ip=eth0,{nic.address},{mask}")
        if nic.gateway:
            extra.append(f"--defaultgw={nic.gateway}")
    return " ".join(words[:cut] + extra + words[cut:])


def _kernel_cmdline(image: Image, host: str, token: str, nic: NicSpec | None,
                    rdma: str | None) -> str:
    """The direct-boot guest's kernel command line: the image's own, then what its init
    reads (vtorque.* words)."""
    extra = [f"vtorque.hostname={host}", f"vtorque.ready={token}"]
    if nic is not None and nic.address:
        extra.append(f"vtorque.ip={nic.address}/{nic.prefix}")
        if nic.gateway:
            extra.append(f"vtorque.gw={nic.gateway}")
        extra.append(f"vtorque.mtu={nic.mtu}")
    elif nic is not None:
        extra.append("vtorque.net=dhcp")
    if image.host_share:
        extra.append(f"vtorque.hostroot={HOSTROOT_TAG}")
    if rdma == "soft-roce":
        extra.append("vtorque.rdma=rxe")
    return " ".join(filter(None, [image.cmdline, *extra]))
