"""The VM request: `-vm key=value[,key=value]` parsed, merged with defaults, checked, frozen.

The same code runs on the submit host (vsub, as the user) and on the root side (hooks),
so a request that passes one passes the other, and the root side never trusts that the
submit side ran at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from vtorque.config import ARCHES, FS_TYPES, Config
from vtorque.errors import ImageError, RequestError
from vtorque.text import one_line, shown
from vtorque.units import (
    format_hugepages,
    format_mib,
    parse_bool,
    parse_hugepages,
    parse_size_mib,
)

# The keys users know from vTorque, in the order help texts list them.
VM_KEYS = ("img", "distro", "arch", "vcpus", "ram", "vms_per_node", "vcpu_pinning", "disk",
           "vm_prologue", "vm_epilogue", "vrdma", "fs_type", "hugepages")

KEY_HELP = {
    "img": "authorized image name from the site's pool",
    "distro": "pick the site's image for this distro when img is not given",
    "arch": "guest architecture",
    "vcpus": "virtual CPUs per guest",
    "ram": "memory per guest (K/M/G/T, binary units; bare number = M)",
    "vms_per_node": "guests per allocated node",
    "vcpu_pinning": "pin vCPUs to host cores (yes/no)",
    "disk": "size of a scratch disk for guest rank 0, mounted at /data (0 = none)",
    "vm_prologue": "script path inside the guest, run as you before the job",
    "vm_epilogue": "script path inside the guest, run as you after the job",
    "vrdma": "RDMA device in every guest (yes/no)",
    "fs_type": "where guest disks live on the node: sharedfs or ramdisk",
    "hugepages": "guest RAM from the node's huge pages: yes (2M pages), 2M, 1G or no; "
                 "ram must be a whole number of pages",
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_GUEST_PATH = re.compile(r"/[A-Za-z0-9._+/-]{1,255}")
_INT = re.compile(r"[0-9]+")
# Longer than any real request: a bound on the work (and the echo) a text can cause.
MAX_REQUEST = 1 << 16


@dataclass(frozen=True)
class VmRequest:
    """A complete, checked request: every key has a value (the user's or the default)."""
    img: str | None
    distro: str | None
    arch: str
    vcpus: int
    ram_mib: int
    vms_per_node: int
    vcpu_pinning: bool
    disk_mib: int
    vm_prologue: str | None
    vm_epilogue: str | None
    vrdma: bool
    fs_type: str
    hugepage_mib: int = 0      # page size backing guest RAM; 0: ordinary memory

    def to_text(self) -> str:
        """Canonical `key=value,...` form; parse_request(to_text()) gives the same request."""
        parts = []
        for key, value in self.user_items():
            parts.append(f"{key}={value}")
        return ",".join(parts)

    def user_items(self) -> list[tuple[str, str]]:
        """(key, text) for every key with a value, in VM_KEYS order."""
        data = asdict(self)
        items = []
        for key in VM_KEYS:
            if key == "ram":
                items.append(("ram", format_mib(self.ram_mib)))
            elif key == "disk":
                items.append(("disk", format_mib(self.disk_mib) if self.disk_mib else "0"))
            elif key == "hugepages":
                items.append(("hugepages", format_hugepages(self.hugepage_mib)))
            else:
                value = data[key]
                if value is None:
                    continue
                if isinstance(value, bool):
                    value = "yes" if value else "no"
                items.append((key, str(value)))
        return items


# The job variable that carries the user's -vm keys from vsub to the root side. Values
# never contain ';' (no request value type admits it), and Torque's Variable_List
# separates variables with ',', so ';' joins the pairs.
JOB_VARIABLE = "VTORQUE_VM"


def encode_pairs(pairs: Mapping[str, str]) -> str:
    """The user's explicit keys as one comma-free text: `img=x;vcpus=2`."""
    return ";".join(f"{key}={pairs[key]}" for key in VM_KEYS if key in pairs)


def decode_pairs(text: str) -> dict[str, str]:
    """Inverse of encode_pairs, with every check of split_pairs (the text came through
    the batch system, which the user can alter with qalter: trust nothing)."""
    return split_pairs([text.replace(";", ",")])


def split_pairs(texts: Iterable[str]) -> dict[str, str]:
    """Split one or more `key=value[,key=value]` texts into a dict.

    Refuses unknown keys (suggesting the closest known one), duplicates across all texts,
    empty values, and values carrying `,` `=` or a leading `-`.
    """
    pairs: dict[str, str] = {}
    total = 0
    for text in texts:
        if not isinstance(text, str):
            raise RequestError("a -vm request must be text (expected key=value[,key=value])")
        total += len(text)
        if total > MAX_REQUEST:
            raise RequestError(f"-vm requests longer than {MAX_REQUEST} characters in all")
        if not text.strip():
            raise RequestError("empty -vm request (expected key=value[,key=value])")
        for item in text.split(","):
            item = item.strip()
            if "=" not in item:
                raise RequestError(f"malformed -vm item {shown(item)} (expected key=value; "
                                   "values cannot contain ',')")
            key, value = item.split("=", 1)
            key = key.strip()
            value = value.strip()
            if key not in VM_KEYS:
                import difflib  # here: only a mistyped key pays for it
                close = difflib.get_close_matches(key, VM_KEYS, n=1) if len(key) <= 40 else []
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RequestError(f"unknown -vm key {shown(key)}{hint}; known keys: "
                                   + ", ".join(VM_KEYS), key=key)
            if key in pairs:
                raise RequestError(f"-vm key '{key}' given more than once", key=key)
            if not value:
                raise RequestError(f"-vm key '{key}' has an empty value", key=key)
            if "=" in value:
                raise RequestError(f"-vm value of '{key}' must not contain '='", key=key)
            if value.startswith("-"):
                raise RequestError(f"-vm value of '{key}' must not start with '-'", key=key)
            pairs[key] = value
    return pairs


def build_request(pairs: Mapping[str, str], config: Config) -> VmRequest:
    """Convert the user's strings, fill in the site defaults, check the site limits."""
    d, lim = config.defaults, config.limits

    def name(key: str, default: str | None) -> str | None:
        if key not in pairs:
            return default
        value = pairs[key]
        if "://" in value or "/" in value or ".." in value or not _NAME.fullmatch(value):
            raise RequestError(f"-vm {key}={shown(value)} is not a catalog name (letters, "
                               "digits, '.', '_', '-'; no paths or URLs)", key=key)
        return value

    def integer(key: str, default: int, lo: int, hi: int, limit_name: str) -> int:
        if key not in pairs:
            return default
        value = pairs[key]
        if not _INT.fullmatch(value):
            raise RequestError(f"-vm {key}={shown(value)} is not a whole number", key=key)
        # A huge number is over any limit; do not hand thousands of digits to int().
        digits = value.lstrip("0") or "0"
        number = int(digits) if len(digits) <= 12 else hi + 1
        if number < lo:
            raise RequestError(f"-vm {key}={number} is below the minimum {lo}", key=key)
        if number > hi:
            raise RequestError(f"-vm {key}={one_line(value, 20)} exceeds the site limit {hi} "
                               f"({limit_name})", key=key)
        return number

    def size(key: str, default: int, lo: int, hi: int, limit_name: str) -> int:
        if key not in pairs:
            return default
        value = pairs[key]
        try:
            mib = parse_size_mib(value)
        except ValueError as exc:
            raise RequestError(f"-vm {key}={shown(value)}: {exc}", key=key) from None
        if key == "disk" and mib == 0:
            return 0
        if mib < lo:
            raise RequestError(f"-vm {key}={one_line(value, 40)} is below the minimum "
                               f"{format_mib(lo)}", key=key)
        if mib > hi:
            raise RequestError(f"-vm {key}={one_line(value, 40)} exceeds the site limit "
                               f"{format_mib(hi)} ({limit_name})", key=key)
        return mib

    def boolean(key: str, default: bool) -> bool:
        if key not in pairs:
            return default
        try:
            return parse_bool(pairs[key])
        except ValueError as exc:
            raise RequestError(f"-vm {key}={shown(pairs[key])}: {exc}", key=key) from None

    def choice(key: str, default: str, choices: tuple[str, ...]) -> str:
        if key not in pairs:
            return default
        if pairs[key] not in choices:
            raise RequestError(f"-vm {key}={shown(pairs[key])}: expected one of "
                               + ", ".join(choices), key=key)
        return pairs[key]

    def guest_path(key: str) -> str | None:
        if key not in pairs:
            return None
        value = pairs[key]
        if not _GUEST_PATH.fullmatch(value) or "/../" in value + "/" or "//" in value:
            raise RequestError(f"-vm {key}={shown(value)} must be an absolute path inside "
                               "the guest (letters, digits, '.', '_', '+', '-', '/')", key=key)
        return value

    if "vcpu_pinning" in pairs and pairs["vcpu_pinning"].startswith("/"):
        # vTorque accepted a pinning file; a user-writable file cannot steer root.
        raise RequestError("-vm vcpu_pinning takes yes or no; pinning files are not "
                           "supported", key="vcpu_pinning")
    ram_mib = size("ram", d.ram, lim.min_ram, lim.ram, "limits.ram")
    hugepage_mib = d.hugepages
    if "hugepages" in pairs:
        try:
            hugepage_mib = parse_hugepages(pairs["hugepages"])
        except ValueError as exc:
            raise RequestError(f"-vm hugepages={shown(pairs['hugepages'])}: {exc}",
                               key="hugepages") from None
    if hugepage_mib and ram_mib % hugepage_mib:
        # QEMU maps guest RAM in whole pages; a partial page would be refused on the node.
        given = "" if "hugepages" in pairs else " (the site's default)"
        raise RequestError(f"-vm ram={format_mib(ram_mib)} is not a whole number of "
                           f"{format_mib(hugepage_mib)} huge pages (hugepages="
                           f"{format_mib(hugepage_mib)}{given}): ask for a multiple of "
                           f"{format_mib(hugepage_mib)}, or another page size", key="ram")
    vrdma = boolean("vrdma", d.vrdma)
    if vrdma and not config.ibverbs.sriov and not config.ibverbs.soft_roce:
        raise RequestError("-vm vrdma=yes: this cluster gives guests no RDMA "
                           "(ibverbs.sriov and ibverbs.soft_roce are both off)", key="vrdma")
    return VmRequest(
        img=name("img", d.img),
        distro=name("distro", d.distro),
        arch=choice("arch", d.arch, ARCHES),
        vcpus=integer("vcpus", d.vcpus, 1, lim.vcpus, "limits.vcpus"),
        ram_mib=ram_mib,
        vms_per_node=integer("vms_per_node", d.vms_per_node, 1, lim.vms_per_node,
                             "limits.vms_per_node"),
        vcpu_pinning=boolean("vcpu_pinning", d.vcpu_pinning),
        disk_mib=size("disk", d.disk, 1, lim.disk, "limits.disk"),
        vm_prologue=guest_path("vm_prologue"),
        vm_epilogue=guest_path("vm_epilogue"),
        vrdma=vrdma,
        fs_type=choice("fs_type", d.fs_type, FS_TYPES),
        hugepage_mib=hugepage_mib,
    )


def parse_request(texts: Iterable[str] | str, config: Config) -> VmRequest:
    """`-vm` texts (one or several) -> a checked, frozen VmRequest."""
    if isinstance(texts, str):
        texts = [texts]
    return build_request(split_pairs(texts), config)


def check_fits_node(request: VmRequest, cores: int, memory_mib: int, config: Config) -> None:
    """Refuse a request whose guests on one node exceed the node minus the host reserve."""
    usable_cores = cores - config.host_reserve.cores
    usable_mib = memory_mib - config.host_reserve.memory
    want_cores = request.vcpus * request.vms_per_node
    want_mib = request.ram_mib * request.vms_per_node
    if want_cores > usable_cores:
        raise RequestError(
            f"-vm vcpus={request.vcpus} x vms_per_node={request.vms_per_node} needs "
            f"{want_cores} cores; this node offers {max(usable_cores, 0)} "
            f"({cores} minus host_reserve.cores={config.host_reserve.cores})", key="vcpus")
    if want_mib > usable_mib:
        raise RequestError(
            f"-vm ram={format_mib(request.ram_mib)} x vms_per_node={request.vms_per_node} "
            f"needs {format_mib(want_mib)}; this node offers {format_mib(max(usable_mib, 0))} "
            f"(its memory minus host_reserve.memory)", key="ram")


# What QEMU itself holds beyond a guest's RAM, per guest: its binary, libraries, device
# models and I/O buffers (a fixed part), each vCPU's thread and KVM state, and the page
# tables for the guest's memory (1/512 of it). An estimate, on the safe side of what a
# q35 guest with virtio devices shows; a guest with VFIO devices locks more (vm/spec.py).
QEMU_FIXED_MIB = 64
QEMU_PER_VCPU_MIB = 4
QEMU_PAGE_TABLE_DIVISOR = 512


def qemu_overhead_mib(request: VmRequest) -> int:
    """QEMU's own memory for one guest of `request`, beyond the guest's RAM."""
    return (QEMU_FIXED_MIB + QEMU_PER_VCPU_MIB * request.vcpus
            + -(-request.ram_mib // QEMU_PAGE_TABLE_DIVISOR))


def guests_memory_mib(request: VmRequest, *, rank0_here: bool, overlay_mib: int = 0) -> int:
    """The memory one node's guests of the job take from the job: each guest's RAM and
    QEMU's overhead, and with fs_type=ramdisk their disks, which live in memory: rank 0's
    scratch disk (on the node holding rank 0) and `overlay_mib` per guest (what the
    caller expects an overlay to grow to, e.g. the image's virtual size)."""
    total = request.vms_per_node * (request.ram_mib + qemu_overhead_mib(request))
    if request.fs_type == "ramdisk":
        total += request.vms_per_node * max(overlay_mib, 0)
        if rank0_here:
            total += request.disk_mib
    return total


def check_fits_allocation(request: VmRequest, allocation, node: str, *, rank0_here: bool,
                          overlay_mib: int = 0) -> None:
    """Refuse (RequestError, the user's error: one line with the numbers) a request whose
    guests on `node` exceed what the batch system allocated this job there.
    `allocation` is the node's batch.allocation.NodeAllocation (anything with cpus,
    memory_mib, cpus_from and memory_from): its cores hold the guests' vCPUs; its memory,
    when the batch system bounds it (None: it does not), holds guests_memory_mib. The
    host's reserve is not taken from the job (check_fits_node keeps it on the node)."""
    where = f"node {one_line(node, 80)}"
    want_cores = request.vcpus * request.vms_per_node
    if want_cores > allocation.cpus:
        source = f" ({allocation.cpus_from})" if allocation.cpus_from else ""
        raise RequestError(
            f"-vm vcpus={request.vcpus} x vms_per_node={request.vms_per_node} needs "
            f"{want_cores} cores on {where}, but the batch system allocated this job "
            f"{allocation.cpus} there{source}: request at least {want_cores} (vsub sizes "
            "the request itself) or fewer vCPUs", key="vcpus")
    if allocation.memory_mib is None:
        return
    want_mib = guests_memory_mib(request, rank0_here=rank0_here, overlay_mib=overlay_mib)
    if want_mib > allocation.memory_mib:
        parts = [f"ram={format_mib(request.ram_mib)} x vms_per_node={request.vms_per_node}",
                 f"{format_mib(request.vms_per_node * qemu_overhead_mib(request))} for QEMU"]
        if request.fs_type == "ramdisk" and overlay_mib > 0:
            parts.append(f"{format_mib(request.vms_per_node * overlay_mib)} of overlays on "
                         "ramdisk")
        if request.fs_type == "ramdisk" and rank0_here and request.disk_mib:
            parts.append(f"the {format_mib(request.disk_mib)} scratch disk on ramdisk")
        source = f" ({allocation.memory_from})" if allocation.memory_from else ""
        raise RequestError(
            f"-vm {' + '.join(parts)} needs {format_mib(want_mib)} on {where}, but the "
            f"batch system allocated this job {format_mib(allocation.memory_mib)} there"
            f"{source}: request at least {format_mib(want_mib)} (vsub sizes the request "
            "itself) or less memory", key="ram")


def image_name(request: VmRequest, catalog) -> str:
    """The request's image: img when given, else the first catalog image of its distro."""
    if request.img:
        return request.img
    if request.distro:
        names = catalog.names_for_distro(request.distro)
        if not names:
            raise ImageError(f"no authorized image for distro '{request.distro}'")
        return names[0]
    raise ImageError("the request names no image (-vm img=NAME) and the site sets no "
                     "default image (defaults.img)")


def check_image_matches(request: VmRequest, image, config: Config) -> None:
    """Refuse an image whose declared distro or arch contradicts the request, or that this
    site cannot run as asked."""
    if request.distro and image.distro != request.distro:
        raise ImageError(f"image '{image.name}' is distro '{image.distro}', but the request "
                         f"asks for distro '{request.distro}'")
    if image.arch != request.arch:
        raise ImageError(f"image '{image.name}' is arch '{image.arch}', but the request "
                         f"asks for arch '{request.arch}'")
    if request.vrdma and image.kind == "osv":
        raise ImageError(f"image '{image.name}' is an OSv unikernel, which has no RDMA "
                         "drivers; drop vrdma=yes or pick a Linux image")
    if image.kind == "osv" and config.network.mode == "none":
        # OSv is reached only through its REST API, over the guest's own address.
        raise ImageError(f"image '{image.name}' is an OSv unikernel, which vtorque drives "
                         "over its network, but this site gives guests none "
                         f"(network.mode: none in {config.path})")
