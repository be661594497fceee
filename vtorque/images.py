"""The catalog of admin-authorized images.

A pool directory holds one descriptor ``<name>.yaml`` per image plus the image files it names.
Users may only ask for catalog names, never paths or URLs. Two gates use this module:

- ``Catalog.describe`` (submit side, runs as the user): parses and shape-checks a descriptor and
  checks that every file it names is a regular file inside the pool reached without symlinks.
- ``Catalog.authorize`` (root side): all of the above, plus ownership and permissions of the pool
  (and its ancestors), descriptor and files, the disk header (qcow2 without backing or external
  data file, raw without any known image header; never probed), and the sha256 of every file.

Every refusal is one ImageError line: ``image 'x': <reason>``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from vtorque.errors import ImageError

KINDS = ("linux", "kernel", "osv")
ARCHES = ("x86_64",)
DISK_FORMATS = ("qcow2", "raw")
DESCRIPTOR_SUFFIX = ".yaml"
CACHE_FILE = "checksums.json"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CMDLINE = re.compile(r"[\x20-\x7e]*")
_CMDLINE_MAX = 1024
_DESCRIPTOR_MAX = 1 << 20
_CHUNK = 1 << 20

_TOP_KEYS = ("name", "kind", "distro", "arch", "kernel", "initrd", "cmdline", "disk",
             "host_share")
_FILE_KEYS = ("file", "sha256")
_DISK_KEYS = ("file", "format", "sha256")

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


@dataclass(frozen=True)
class ImageFile:
    """One file of an image: absolute normalized path inside the pool and its checksum."""

    path: str
    sha256: str
    format: str | None = None


@dataclass(frozen=True)
class Image:
    """A parsed, shape-checked descriptor."""

    name: str
    kind: str
    distro: str
    arch: str
    descriptor: str
    disk: ImageFile | None
    kernel: ImageFile | None
    initrd: ImageFile | None
    cmdline: str
    # The admin lets guests of this image mount the node's root file system read-only
    # (9p, tag "hostroot") to run the node's own software: sshd, Open MPI (test guests).
    host_share: bool = False

    def files(self) -> list[tuple[str, ImageFile]]:
        """(role, file) of every file the image uses: disk, kernel, initrd."""
        roles = (("disk", self.disk), ("kernel", self.kernel), ("initrd", self.initrd))
        return [(role, f) for role, f in roles if f is not None]


def _show(name: str) -> str:
    """A user-given name, quoted and escaped, cut short if long."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def _refuse(name: str, reason: str) -> ImageError:
    return ImageError(f"image {_show(name)}: {reason}")


def is_valid_name(name: object) -> bool:
    """Whether name follows the catalog name rule."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: str) -> None:
    """Refuse anything but a plain catalog name (paths, URLs, odd characters)."""
    if not isinstance(name, str):
        raise ImageError(f"image {name!r}: only catalog names are accepted")
    if "://" in name:
        raise _refuse(name, "only catalog names are accepted, not URLs")
    if "/" in name or ".." in name or os.path.isabs(name):
        raise _refuse(name, "only catalog names are accepted, not paths")
    if not is_valid_name(name):
        raise _refuse(name, "only catalog names are accepted "
                            "(letters, digits, '.', '_', '-'; at most 64 characters)")


# --- descriptor shape ----------------------------------------------------------------------

class _Shape:
    """Checks the raw YAML mapping of one descriptor; errors name the file and the key."""

    def __init__(self, name: str, descriptor: str, data: dict[str, Any]):
        self.name = name
        self.descriptor = descriptor
        self.data = data

    def error(self, reason: str) -> ImageError:
        return _refuse(self.name, f"descriptor {self.descriptor}: {reason}")

    def check_keys(self, data: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.error(f"unknown key {prefix + str(key)!r}")

    def string(self, key: str, required: bool = True) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(f"missing key {key!r}")
            return None
        if not isinstance(value, str):
            raise self.error(f"key {key!r} must be a string")
        return value

    def word(self, key: str) -> str:
        value = self.string(key)
        assert value is not None
        if not is_valid_name(value):
            raise self.error(f"key {key!r} must be a name "
                             "(letters, digits, '.', '_', '-'; at most 64 characters)")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            raise self.error(f"key {key!r} must be one of {', '.join(choices)}, got {value!r}")
        assert value is not None
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self.error(f"key {key!r} must be true or false")
        return value

    def file_entry(self, key: str, is_disk: bool) -> tuple[str, str, str | None] | None:
        """(relative file, sha256, format) of a file key, or None when absent."""
        entry = self.data.get(key)
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise self.error(f"key {key!r} must be a mapping with keys "
                             f"{', '.join(_DISK_KEYS if is_disk else _FILE_KEYS)}")
        self.check_keys(entry, _DISK_KEYS if is_disk else _FILE_KEYS, key + ".")
        for sub in _DISK_KEYS if is_disk else _FILE_KEYS:
            if entry.get(sub) is None:
                raise self.error(f"missing key {key + '.' + sub!r}")
            if not isinstance(entry[sub], str):
                hint = " (quote it if it is all digits)" if sub == "sha256" else ""
                raise self.error(f"key {key + '.' + sub!r} must be a string{hint}")
        if not _SHA256.fullmatch(entry["sha256"]):
            raise self.error(f"key {key + '.sha256'!r} must be 64 hexadecimal digits")
        fmt = entry.get("format")
        if is_disk and fmt not in DISK_FORMATS:
            raise self.error(f"key {key + '.format'!r} must be one of "
                             f"{', '.join(DISK_FORMATS)}, got {fmt!r}")
        return entry["file"], entry["sha256"].lower(), fmt

    def cmdline(self) -> str:
        value = self.string("cmdline", required=False) or ""
        if len(value) > _CMDLINE_MAX:
            raise self.error(f"key 'cmdline' is longer than {_CMDLINE_MAX} characters")
        if not _CMDLINE.fullmatch(value) or '"' in value or "'" in value:
            raise self.error("key 'cmdline' must be printable ASCII without quotes")
        return value

    def check_kind_rules(self, kind: str) -> None:
        present = {k for k in ("kernel", "initrd", "cmdline", "disk") if k in self.data}
        if kind == "kernel":
            if "kernel" not in present:
                raise self.error("missing key 'kernel' (required for kind 'kernel')")
            return
        for key in ("kernel", "initrd", "cmdline"):
            if key in present:
                raise self.error(f"key {key!r} is not allowed for kind {kind!r}")
        if "disk" not in present:
            raise self.error(f"missing key 'disk' (required for kind {kind!r})")


# --- filesystem checks ---------------------------------------------------------------------

def _components(pool: str, path: str) -> Iterator[str]:
    """Every path from the pool (exclusive) down to path (inclusive)."""
    current = pool
    for part in os.path.relpath(path, pool).split(os.sep):
        current = os.path.join(current, part)
        yield current


def _lstat(name: str, path: str, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise _refuse(name, f"{what} does not exist") from None
    except OSError as exc:
        raise _refuse(name, f"cannot check {what}: {exc.strerror}") from None


def _check_owner(name: str, st: os.stat_result, what: str, owner_uid: int) -> None:
    """Refuse unless owned by owner_uid and not writable by group or others."""
    if st.st_uid != owner_uid:
        raise _refuse(name, f"{what} is owned by uid {st.st_uid}, not {owner_uid}")
    if st.st_mode & 0o022:
        raise _refuse(name, f"{what} is writable by group or others "
                            f"(mode {stat.S_IMODE(st.st_mode):04o})")


def _read_head(path: str, size: int) -> bytes:
    """Up to size bytes from the start of a regular file, not following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read(size)


def _sha256_file(path: str) -> str:
    """Hex sha256 of a regular file, read in 1 MiB chunks (never follows a final symlink)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- disk headers --------------------------------------------------------------------------

def _check_qcow2(name: str, label: str, head: bytes) -> None:
    """Refuse a qcow2 header with a backing file or an external data file."""
    if len(head) < 72 or head[:4] != _QCOW2_MAGIC:
        raise _refuse(name, f"disk {label} is not a qcow2 image (no qcow2 header)")
    version, backing_offset = struct.unpack_from(">IQ", head, 4)
    cluster_bits = struct.unpack_from(">I", head, 20)[0]
    if version not in (2, 3):
        raise _refuse(name, f"disk {label} has unsupported qcow2 version {version}")
    if not _QCOW2_MIN_CLUSTER_BITS <= cluster_bits <= _QCOW2_MAX_CLUSTER_BITS:
        raise _refuse(name, f"disk {label} has a malformed qcow2 header (cluster_bits)")
    if backing_offset != 0:
        raise _refuse(name, f"disk {label} has a backing file")
    ext_start = 72
    if version >= 3:
        if len(head) < 104:
            raise _refuse(name, f"disk {label} has a truncated qcow2 header")
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        if incompatible & _QCOW2_INCOMPAT_DATA_FILE:
            raise _refuse(name, f"disk {label} has an external data file")
        ext_start = struct.unpack_from(">I", head, 100)[0]
        if ext_start < 104:
            raise _refuse(name, f"disk {label} has a malformed qcow2 header (header_length)")
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
            raise _refuse(name, f"disk {label} has an external data file")
        offset += 8 + (length + 7) // 8 * 8
    raise _refuse(name, f"disk {label} has malformed qcow2 header extensions")


def _check_raw(name: str, label: str, head: bytes) -> None:
    """Refuse a raw disk that starts like another image format."""
    for fmt, offset, magic in _KNOWN_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            raise _refuse(name, f"raw image {label} carries a {fmt} header")


def _check_disk_header(name: str, label: str, disk: ImageFile) -> None:
    """Read the disk's first bytes (never probe) and check them against its stated format."""
    size = 1 << _QCOW2_MAX_CLUSTER_BITS if disk.format == "qcow2" else 512
    try:
        head = _read_head(disk.path, size)
    except OSError as exc:
        raise _refuse(name, f"cannot read disk {label}: {exc.strerror or exc}") from None
    if disk.format == "qcow2":
        _check_qcow2(name, label, head)
    else:
        _check_raw(name, label, head)


# --- checksum cache ------------------------------------------------------------------------

def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class _ChecksumCache:
    """Remembered verified sha256 values, keyed by path and the file's stat identity.

    Stored as one JSON file in a private directory; anything odd about the directory or the
    file (corrupt, foreign owner, symlink) means the cache is not used, never an error.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, CACHE_FILE)
        self.usable = self._prepare_dir()
        self.entries: dict[str, dict[str, Any]] = self._load() if self.usable else {}
        self.dirty = False

    def _prepare_dir(self) -> bool:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            st = os.lstat(self.directory)
        except OSError:
            return False
        return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                and not st.st_mode & 0o022)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    return {}
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        entry = self.entries.get(path)
        if (isinstance(entry, dict) and entry.get("id") == _identity(st)
                and isinstance(entry.get("sha256"), str)):
            return entry["sha256"]
        return None

    def store(self, path: str, st: os.stat_result, sha256: str) -> None:
        if self.usable:
            self.entries[path] = {"id": _identity(st), "sha256": sha256}
            self.dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename); failures only lose the cache."""
        if not self.dirty:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".checksums.")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": self.entries}, f)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# --- the catalog ---------------------------------------------------------------------------

class Catalog:
    """The admin-authorized images of one pool directory."""

    def __init__(self, pool_dir: str, checksum_cache: str | None = None, owner_uid: int = 0):
        self.pool = os.path.realpath(pool_dir)
        self.checksum_cache = checksum_cache
        self.owner_uid = owner_uid

    def names(self) -> list[str]:
        """Sorted names of the descriptors present (only the file name rule is checked)."""
        try:
            entries = os.listdir(self.pool)
        except OSError as exc:
            raise ImageError(f"image pool {self.pool} cannot be read: {exc.strerror}") from None
        stems = (e[:-len(DESCRIPTOR_SUFFIX)] for e in entries if e.endswith(DESCRIPTOR_SUFFIX))
        return sorted(s for s in stems if is_valid_name(s))

    def describe(self, name: str) -> Image:
        """Parse and shape-check one descriptor, and check its file paths (submit side)."""
        check_name(name)
        available = self.names()
        if name not in available:
            raise ImageError(f"image {_show(name)} is not in the authorized image pool "
                             f"(available: {', '.join(available) or 'none'})")
        descriptor = os.path.join(self.pool, name + DESCRIPTOR_SUFFIX)
        data = self._load_descriptor(name, descriptor)
        return self._build(name, descriptor, data)

    def authorize(self, name: str, verify_checksums: bool = True) -> Image:
        """Every check: describe, ownership, disk header, checksums (the root side's gate)."""
        image = self.describe(name)
        self._check_pool_trusted(name)
        what = f"descriptor {image.descriptor}"
        _check_owner(name, _lstat(name, image.descriptor, what), what, self.owner_uid)
        for _role, f in image.files():
            for path in _components(self.pool, f.path):
                what = f"file {self._rel(path)}"
                _check_owner(name, _lstat(name, path, what), what, self.owner_uid)
        if image.disk is not None:
            _check_disk_header(name, self._rel(image.disk.path), image.disk)
        if verify_checksums:
            self._verify_checksums(image)
        return image

    def names_for_distro(self, distro: str) -> list[str]:
        """Sorted names whose descriptor declares distro; broken descriptors are skipped."""
        found = []
        for name in self.names():
            try:
                image = self.describe(name)
            except ImageError:
                continue
            if image.distro == distro:
                found.append(name)
        return found

    # --- helpers -------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.pool)

    def _load_descriptor(self, name: str, descriptor: str) -> dict[str, Any]:
        """Read and YAML-parse a descriptor that must be a regular file, not a symlink."""
        st = _lstat(name, descriptor, f"descriptor {descriptor}")
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(name, f"descriptor {descriptor} is a symlink")
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(name, f"descriptor {descriptor} is not a regular file")
        try:
            text = _read_head(descriptor, _DESCRIPTOR_MAX + 1)
        except OSError as exc:
            raise _refuse(name, f"cannot read descriptor {descriptor}: "
                                f"{exc.strerror or exc}") from None
        if len(text) > _DESCRIPTOR_MAX:
            raise _refuse(name, f"descriptor {descriptor} is too large")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            raise _refuse(name, f"descriptor {descriptor}: not valid YAML: {first}") from None
        if not isinstance(data, dict):
            raise _refuse(name, f"descriptor {descriptor}: must be a mapping of keys")
        return data

    def _build(self, name: str, descriptor: str, data: dict[str, Any]) -> Image:
        shape = _Shape(name, descriptor, data)
        shape.check_keys(data, _TOP_KEYS, "")
        declared = shape.word("name")
        if declared != name:
            raise shape.error(f"key 'name' is {declared!r} but must equal the file name {name!r}")
        kind = shape.choice("kind", KINDS)
        distro = shape.word("distro")
        arch = shape.choice("arch", ARCHES)
        shape.check_kind_rules(kind)
        return Image(
            name=name, kind=kind, distro=distro, arch=arch, descriptor=descriptor,
            disk=self._file(name, shape.file_entry("disk", is_disk=True)),
            kernel=self._file(name, shape.file_entry("kernel", is_disk=False)),
            initrd=self._file(name, shape.file_entry("initrd", is_disk=False)),
            cmdline=shape.cmdline(),
            host_share=shape.flag("host_share"),
        )

    def _file(self, name: str, entry: tuple[str, str, str | None] | None) -> ImageFile | None:
        if entry is None:
            return None
        rel, sha256, fmt = entry
        return ImageFile(path=self._resolve(name, rel), sha256=sha256, format=fmt)

    def _resolve(self, name: str, rel: str) -> str:
        """Absolute path of a descriptor file: inside the pool, no symlinks, a regular file."""
        if not rel or "\x00" in rel:
            raise _refuse(name, f"file {rel!r} is not a valid file name")
        if os.path.isabs(rel):
            raise _refuse(name, f"file {rel} must be relative to the image pool")
        path = os.path.normpath(os.path.join(self.pool, rel))
        if path == self.pool or os.path.commonpath([self.pool, path]) != self.pool:
            raise _refuse(name, f"file {rel} is outside the image pool")
        for component in _components(self.pool, path):
            st = _lstat(name, component, f"file {rel}")
            if stat.S_ISLNK(st.st_mode):
                raise _refuse(name, f"file {rel}: {self._rel(component)} is a symlink")
            if component != path and not stat.S_ISDIR(st.st_mode):
                raise _refuse(name, f"file {rel}: {self._rel(component)} is not a directory")
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(name, f"file {rel} is not a regular file")
        return path

    def _check_pool_trusted(self, name: str) -> None:
        """The pool must be owner_uid's and not group/other-writable; every ancestor must
        belong to root or owner_uid and be unwritable by others or sticky, so nobody else
        can swap the pool out."""
        st = _lstat(name, self.pool, f"image pool {self.pool}")
        _check_owner(name, st, f"image pool {self.pool}", self.owner_uid)
        parent = os.path.dirname(self.pool)
        while True:
            st = _lstat(name, parent, f"directory {parent}")
            if st.st_uid not in (0, self.owner_uid):
                raise _refuse(name, f"directory {parent} above the image pool is owned by "
                                    f"uid {st.st_uid}")
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise _refuse(name, f"directory {parent} above the image pool is writable "
                                    "by group or others")
            if parent == os.path.dirname(parent):
                return
            parent = os.path.dirname(parent)

    def _verify_checksums(self, image: Image) -> None:
        """sha256 of every file must match; verified results are cached when configured."""
        cache = _ChecksumCache(self.checksum_cache) if self.checksum_cache else None
        try:
            for role, f in image.files():
                self._verify_one(image.name, role, f, cache)
        finally:
            if cache is not None:
                cache.save()

    def _verify_one(self, name: str, role: str, f: ImageFile,
                    cache: _ChecksumCache | None) -> None:
        label = self._rel(f.path)
        before = _lstat(name, f.path, f"{role} {label}")
        if cache is not None and cache.lookup(f.path, before) == f.sha256:
            return
        try:
            actual = _sha256_file(f.path)
        except OSError as exc:
            raise _refuse(name, f"cannot read {role} {label}: {exc.strerror or exc}") from None
        if actual != f.sha256:
            raise _refuse(name, f"{role} {label} does not match its sha256 "
                                f"(expected {f.sha256}, got {actual})")
        after = _lstat(name, f.path, f"{role} {label}")
        if cache is not None and _identity(before) == _identity(after):
            cache.store(f.path, after, actual)
