"""Snapshot starts, decided: which guests may start from a saved template, what the
template depends on, and the XML of a guest restored from it (no I/O here).

A template is one guest of an image booted to a point before anything of a job exists
in it (the test guest's /init: `vtorque.template=TOKEN`), then saved. A job's guest is a
new QEMU, given the template's devices under the job's own name, identity and files,
that loads the saved state and resumes. What is the job's alone arrives after the
restore: its seed (host name, addresses, keys, files, fresh entropy) and its NIC (its
own MAC) are hot-plugged, and libvirt gives every start a new VM generation ID, on which
the guest's kernel reseeds its random number generator. Design: docs/design.md.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import secrets
import struct
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from vtorque.config import Config
from vtorque.errors import HypervisorError
from vtorque.images import Image
from vtorque.vm.spec import METADATA_NS, GuestSpec

# Bumped whenever what a template holds or how it is restored changes: older ones are
# then never used (the format is part of every template's key).
TEMPLATE_FORMAT = 1
TEMPLATE_READY_PREFIX = "vtorque-template-ready"
# Devices a restore may hot-plug (seed, data disk, NIC): a q35 template gets a PCIe root
# port for each of its own PCI devices, one for each of these, and one to spare.
HOTPLUG_DEVICES = 3
# Seed files of a restored test guest (scripts/build-test-image reads them).
SEED_CMDLINE = "vtorque-cmdline"
SEED_ENTROPY = "vtorque-entropy"
SEED_TIME = "vtorque-time"
ENTROPY_BYTES = 64
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
# libvirt's save image: a header (magic, version, XML length, ...; 92 bytes in versions
# 2 and 3), the domain XML, then QEMU's migration stream, which begins with "QEVM".
SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_HEADER = struct.Struct("<16s5I56x")
STREAM_MAGIC = b"QEVM"


def not_eligible(spec: GuestSpec, image: Image, config: Config) -> str | None:
    """Why this guest boots instead of starting from a template (None: it may)."""
    if not config.snapshots.enabled:
        return "snapshot starts are off (snapshots.enabled)"
    if not image.snapshot:
        return f"image {image.name} does not opt in (snapshot: true in its descriptor)"
    if spec.kind != "kernel":
        return (f"image {image.name} is of kind {spec.kind}: only direct-boot images "
                "start from a template yet")
    if spec.hostdevs:
        # A VF's state is the adapter's, not QEMU's: it cannot be saved or restored.
        return "the guest has a passed-through device (VFIO), which cannot be restored"
    if spec.hugepage_kib:
        # A template would take pages of the node's pool that no job holds.
        return "the guest's memory is on huge pages"
    return None


def root_ports(spec: GuestSpec) -> int:
    """PCIe root ports a q35 template of `spec` needs (pc: none, its bus has slots)."""
    if spec.machine != "q35":
        return 0
    own = int(spec.host_share) + len(spec.shares) + int(spec.rng)
    return own + HOTPLUG_DEVICES + 1


@dataclass(frozen=True)
class TemplateShape:
    """Everything a saved state depends on: a template is used only by guests of the same
    shape, and a change of any of these (the image's files, QEMU or libvirt, the guest's
    hardware) makes another template."""
    image_name: str
    image_files: tuple[tuple[str, str, str], ...]    # (role, path, sha256)
    cmdline: str                                     # the image's own
    domain_type: str
    arch: str
    machine: str
    cpu_mode: str | None
    vcpus: int
    memory_mib: int
    host_share: bool
    shares: tuple[tuple[str, bool], ...]             # (tag, read-only), in order
    rng: bool
    hugepage_kib: int                                # 0: ordinary memory
    numa_cells: tuple[tuple[str, int], ...]          # the guest's (vCPUs, MiB) per cell
    hypervisor_version: int
    libvirt_version: int
    format: int = TEMPLATE_FORMAT

    def key(self) -> str:
        """A name for the template: the digest of the shape."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def to_dict(self) -> dict:
        """The shape as JSON gives it back (lists for tuples): what meta.json holds."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def shape_of(spec: GuestSpec, image: Image, versions: tuple[int, int]) -> TemplateShape:
    """The shape of `spec`'s guest; `versions`: (hypervisor, libvirt) as libvirt says."""
    return TemplateShape(
        image_name=image.name,
        image_files=tuple((role, f.path, f.sha256) for role, f in image.files()),
        cmdline=image.cmdline, domain_type=spec.domain_type, arch=spec.arch,
        machine=spec.machine, cpu_mode=spec.cpu_mode, vcpus=spec.vcpus,
        memory_mib=spec.memory_mib, host_share=spec.host_share,
        shares=tuple((s.tag, s.readonly) for s in spec.shares), rng=spec.rng,
        hugepage_kib=spec.hugepage_kib,
        numa_cells=tuple((c.vcpu_list, c.memory_mib) for c in spec.numa_cells),
        hypervisor_version=versions[0], libvirt_version=versions[1])


def template_spec(spec: GuestSpec, shape: TemplateShape, *, name: str, token: str,
                  console_log: str, placeholder_dir: str, qemu_uid: int,
                  qemu_gid: int) -> GuestSpec:
    """The template guest of `spec`'s shape: the same hardware with nothing of a job (no
    seed, NIC, data disk, job tag), shares pointing at an empty directory, and spare
    ports for what a restore hot-plugs. It runs where the job's guest will (its cores,
    its NUMA nodes): where a guest runs is not part of its saved state."""
    shares = tuple(dataclasses.replace(share, source=placeholder_dir)
                   for share in spec.shares)
    return dataclasses.replace(
        spec, job_id="template", rank=0, node="", name=name, hostname="template",
        title=f"vtorque template of image {shape.image_name}",
        cmdline=" ".join(filter(None, [shape.cmdline, f"vtorque.template={token}"])),
        overlay=None, base_image=None, scratch=None, scratch_mib=0, seed=None, nic=None,
        console_log=console_log, ready_token=token, qemu_uid=qemu_uid, qemu_gid=qemu_gid,
        rdma=None, hostdevs=(), shares=shares, owner_uid=None, owner_gid=None,
        genid=True, hotplug_ports=root_ports(spec), template_key=shape.key())


def template_ready_line(token: str) -> str:
    """What the template guest prints at its snapshot point."""
    return f"{TEMPLATE_READY_PREFIX} {token}"


def restore_documents(spec: GuestSpec, entropy: bytes | None = None,
                      now: float | None = None) -> dict[str, str]:
    """The seed files only a restored guest reads: its job's kernel command line words
    (its real command line is the template's), fresh entropy from the host (credited and
    reseeded by the guest), and the host's time (its clock is the template's)."""
    entropy = entropy if entropy is not None else secrets.token_bytes(ENTROPY_BYTES)
    now = time.time() if now is None else now
    return {SEED_CMDLINE: (spec.cmdline or "") + "\n", SEED_ENTROPY: entropy.hex() + "\n",
            SEED_TIME: f"{int(now)}\n"}


def stream_offset(header: bytes) -> int:
    """Where QEMU's migration stream begins in a libvirt save image, from its first
    bytes. HypervisorError for anything but an uncompressed image of a known version."""
    if len(header) < SAVE_HEADER.size:
        raise HypervisorError("the saved template is truncated (no complete header)")
    magic, version, xml_len, _running, compressed, _cookie = SAVE_HEADER.unpack_from(header)
    if magic != SAVE_MAGIC:
        raise HypervisorError("the saved template is not a libvirt save image")
    if version not in (2, 3):
        raise HypervisorError(f"the saved template has save image version {version}, "
                              "which vtorque does not know")
    if compressed:
        raise HypervisorError("the saved template is compressed (qemu.conf "
                              "save_image_format): vtorque restores only raw images")
    offset = SAVE_HEADER.size + xml_len
    if header[offset:offset + len(STREAM_MAGIC)] != STREAM_MAGIC:
        raise HypervisorError("the saved template has no QEMU migration stream where its "
                              "header says")
    return offset


# Elements of a guest's own rendered XML that a restored guest takes over the template's.
_OWN = ("name", "title", "metadata", "seclabel")


def restored_domain_xml(template_xml: str, own_xml: str) -> str:
    """The domain of a guest restored from the template whose live XML (addresses and
    all) is `template_xml`; `own_xml` is the guest's own XML as a cold boot would use it.

    The devices are the template's, exactly: QEMU loads the saved state only into the
    same machine. What is not part of the machine is the guest's own: name, title, job
    tag, QEMU's identity, pinning, host NUMA binding, console log, the sources of its
    shares. There is no
    UUID (libvirt makes one) and an empty generation ID (libvirt draws a new one), and
    QEMU starts waiting for the saved state (`-incoming defer`)."""
    try:
        return _restored(ET.fromstring(template_xml), ET.fromstring(own_xml))
    except (ET.ParseError, AttributeError, TypeError) as exc:
        raise HypervisorError(f"the template's definition cannot be used: {exc}") from None


def _restored(root: ET.Element, own: ET.Element) -> str:
    ET.register_namespace("qemu", QEMU_NS)
    ET.register_namespace("vt", METADATA_NS)
    for tag in ("uuid", "genid", "cputune", "numatune", "resource", "qemu:commandline"):
        for elem in root.findall(tag.replace("qemu:", f"{{{QEMU_NS}}}")):
            root.remove(elem)
    for tag in _OWN:
        for elem in root.findall(tag):
            root.remove(elem)
        for mine in own.findall(tag):
            root.insert(_position(root, tag), copy.deepcopy(mine))
    root.insert(_position(root, "genid"), ET.Element("genid"))
    for tag in ("cputune", "numatune"):
        mine = own.find(tag)
        if mine is not None:
            root.insert(_position(root, tag), copy.deepcopy(mine))
    devices = root.find("devices")
    if devices is None:
        raise HypervisorError("the template's domain has no devices")
    for kind in ("serial", "console"):
        for char in devices.findall(kind):
            for source in char.findall("source"):   # a pty's path is the old QEMU's
                char.remove(source)
    own_log = own.find("devices/serial/log")
    for log in devices.findall("serial/log") + devices.findall("console/log"):
        if own_log is None:
            raise HypervisorError("the guest has no console log")
        log.set("file", own_log.get("file", ""))
        log.set("append", "off")
    sources = {fs.find("target").get("dir"): fs.find("source").get("dir")
               for fs in own.findall("devices/filesystem")}
    for fs in devices.findall("filesystem"):
        tag = fs.find("target").get("dir")
        if tag not in sources:
            raise HypervisorError(f"the guest has no share for the template's tag {tag}")
        fs.find("source").set("dir", sources.pop(tag))
    if sources:
        raise HypervisorError(f"the template has no share for tag(s) {', '.join(sources)}")
    line = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for word in ("-incoming", "defer"):
        ET.SubElement(line, f"{{{QEMU_NS}}}arg", value=word)
    return ET.tostring(root, encoding="unicode")


# The order libvirt's schema wants of the top-level elements that are moved here.
_ORDER = ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory",
          "memory", "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu",
          "iothreads", "vcpus", "cputune", "numatune")


def _position(root: ET.Element, tag: str) -> int:
    """Index at which to insert `tag` so that it follows the elements before it (a
    seclabel goes last, after the devices)."""
    if tag == "seclabel":
        return len(root)
    before = set(_ORDER[:_ORDER.index(tag)]) if tag in _ORDER else set()
    index = 0
    for i, child in enumerate(root):
        if child.tag in before:
            index = i + 1
    return index


def hotplug_devices(own_xml: str) -> list[str]:
    """The devices of a guest's own XML that a restored guest gets hot-plugged, in
    order: its disks (seed, data disk), then its NIC."""
    own = ET.fromstring(own_xml)
    devices = own.find("devices")
    if devices is None:
        return []
    picked = devices.findall("disk") + devices.findall("interface")
    return [ET.tostring(elem, encoding="unicode") for elem in picked]
