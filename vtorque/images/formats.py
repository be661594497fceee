"""Disk headers checked by hand, never probed: a qcow2 without a backing file or an
external data file, a raw disk that carries no other format's header."""

from __future__ import annotations

import struct

from vtorque.images.model import ImageFile, refuse
from vtorque.images.pool_files import read_head

_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_MAX_CLUSTER_BITS = 21
_QCOW2_MIN_CLUSTER_BITS = 9

# (format name, byte offset, magic) of image formats a raw disk must not look like.
_KNOWN_MAGICS = (
    ("qcow2", 0, _QCOW2_MAGIC),
    ("QED", 0, b"QED\x00"),
    ("VMDK", 0, b"KDMV"),
    ("VMDK descriptor", 0, b"# Disk DescriptorFile"),
    ("VDI", 0, b"<<< "),
    ("VDI", 64, b"\x7f\x10\xda\xbe"),
    ("VHDX", 0, b"vhdxfile"),
    ("VPC", 0, b"conectix"),
    ("LUKS", 0, b"LUKS\xba\xbe"),
)


def _check_qcow2(name: str, label: str, head: bytes) -> None:
    """Refuse a qcow2 header with a backing file or an external data file."""
    if len(head) < 72 or head[:4] != _QCOW2_MAGIC:
        raise refuse(name, f"disk {label} is not a qcow2 image (no qcow2 header)")
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    cluster_bits = struct.unpack_from(">I", head, 20)[0]
    if version not in (2, 3):
        raise refuse(name, f"disk {label} has unsupported qcow2 version {version}")
    if not _QCOW2_MIN_CLUSTER_BITS <= cluster_bits <= _QCOW2_MAX_CLUSTER_BITS:
        raise refuse(name, f"disk {label} has a malformed qcow2 header (cluster_bits)")
    if backing_offset != 0:
        raise refuse(name, f"disk {label} has a backing file")
    ext_start = 72
    if version >= 3:
        if len(head) < 104:
            raise refuse(name, f"disk {label} has a truncated qcow2 header")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise refuse(name, f"disk {label} has an external data file")
        ext_start = struct.unpack_from(">I", head, 100)[0]
        if ext_start < 104:
            raise refuse(name, f"disk {label} has a malformed qcow2 header (header_length)")
    _check_qcow2_extensions(name, label, head, ext_start, 1 << cluster_bits)


def _check_qcow2_extensions(name: str, label: str, head: bytes, offset: int,
                            cluster_size: int) -> None:
    """Walk the header extensions; bytes past the end of the file read as zeros, as in QEMU."""
    while offset + 8 <= cluster_size:
        if offset + 8 > len(head):
            return
        ext_type, length = struct.unpack_from(">II", head, offset)
        if ext_type == 0:
            return
        if ext_type == _QCOW2_EXT_DATA_FILE:
            raise refuse(name, f"disk {label} has an external data file")
        offset += 8 + (length + 7) // 8 * 8
    raise refuse(name, f"disk {label} has malformed qcow2 header extensions")


def _check_raw(name: str, label: str, head: bytes) -> None:
    """Refuse a raw disk that starts like another image format."""
    for fmt, offset, magic in _KNOWN_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            raise refuse(name, f"raw image {label} carries a {fmt} header")


def header_size(fmt: str | None) -> int:
    """How many first bytes of a disk check_disk_header reads."""
    return 1 << _QCOW2_MAX_CLUSTER_BITS if fmt == "qcow2" else 512


def check_disk_header(name: str, label: str, disk: ImageFile,
                      head: bytes | None = None) -> None:
    """Check the disk's first bytes (never probe) against its stated format: `head` as
    read from the verified descriptor, else read from the path."""
    if head is None:
        try:
            head = read_head(disk.path, header_size(disk.format))
        except OSError as exc:
            raise refuse(name, f"cannot read disk {label}: {exc.strerror or exc}") from None
    if disk.format == "qcow2":
        _check_qcow2(name, label, head)
    else:
        _check_raw(name, label, head)
