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

import os
import stat
from typing import Any

import yaml

from vtorque.errors import ImageError
from vtorque.images.checksums import ChecksumCache, identity
from vtorque.images.descriptor import TOP_KEYS, Shape
from vtorque.images.formats import check_disk_header
from vtorque.images.model import (
    ARCHES,
    DESCRIPTOR_SUFFIX,
    KINDS,
    Image,
    ImageFile,
    check_name,
    is_valid_name,
    refuse,
    show,
)
from vtorque.images.pool_files import (
    check_owner,
    components,
    lstat_in_pool,
    read_head,
    sha256_file,
)

_DESCRIPTOR_MAX = 1 << 20


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
            raise ImageError(f"image {show(name)} is not in the authorized image pool "
                             f"(available: {', '.join(available) or 'none'})")
        descriptor = os.path.join(self.pool, name + DESCRIPTOR_SUFFIX)
        data = self._load_descriptor(name, descriptor)
        return self._build(name, descriptor, data)

    def authorize(self, name: str, verify_checksums: bool = True) -> Image:
        """Every check: describe, ownership, disk header, checksums (the root side's gate)."""
        image = self.describe(name)
        self._check_pool_trusted(name)
        what = f"descriptor {image.descriptor}"
        check_owner(name, lstat_in_pool(name, image.descriptor, what), what, self.owner_uid)
        for _role, f in image.files():
            for path in components(self.pool, f.path):
                what = f"file {self._rel(path)}"
                check_owner(name, lstat_in_pool(name, path, what), what, self.owner_uid)
        if image.disk is not None:
            check_disk_header(name, self._rel(image.disk.path), image.disk)
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
        st = lstat_in_pool(name, descriptor, f"descriptor {descriptor}")
        if stat.S_ISLNK(st.st_mode):
            raise refuse(name, f"descriptor {descriptor} is a symlink")
        if not stat.S_ISREG(st.st_mode):
            raise refuse(name, f"descriptor {descriptor} is not a regular file")
        try:
            text = read_head(descriptor, _DESCRIPTOR_MAX + 1)
        except OSError as exc:
            raise refuse(name, f"cannot read descriptor {descriptor}: "
                                f"{exc.strerror or exc}") from None
        if len(text) > _DESCRIPTOR_MAX:
            raise refuse(name, f"descriptor {descriptor} is too large")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            raise refuse(name, f"descriptor {descriptor}: not valid YAML: {first}") from None
        if not isinstance(data, dict):
            raise refuse(name, f"descriptor {descriptor}: must be a mapping of keys")
        return data

    def _build(self, name: str, descriptor: str, data: dict[str, Any]) -> Image:
        shape = Shape(name, descriptor, data)
        shape.check_keys(data, TOP_KEYS, "")
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
            raise refuse(name, f"file {rel!r} is not a valid file name")
        if os.path.isabs(rel):
            raise refuse(name, f"file {rel} must be relative to the image pool")
        path = os.path.normpath(os.path.join(self.pool, rel))
        if path == self.pool or os.path.commonpath([self.pool, path]) != self.pool:
            raise refuse(name, f"file {rel} is outside the image pool")
        for component in components(self.pool, path):
            st = lstat_in_pool(name, component, f"file {rel}")
            if stat.S_ISLNK(st.st_mode):
                raise refuse(name, f"file {rel}: {self._rel(component)} is a symlink")
            if component != path and not stat.S_ISDIR(st.st_mode):
                raise refuse(name, f"file {rel}: {self._rel(component)} is not a directory")
        if not stat.S_ISREG(st.st_mode):
            raise refuse(name, f"file {rel} is not a regular file")
        return path

    def _check_pool_trusted(self, name: str) -> None:
        """The pool must be owner_uid's and not group/other-writable; every ancestor must
        belong to root or owner_uid and be unwritable by others or sticky, so nobody else
        can swap the pool out."""
        st = lstat_in_pool(name, self.pool, f"image pool {self.pool}")
        check_owner(name, st, f"image pool {self.pool}", self.owner_uid)
        parent = os.path.dirname(self.pool)
        while True:
            st = lstat_in_pool(name, parent, f"directory {parent}")
            if st.st_uid not in (0, self.owner_uid):
                raise refuse(name, f"directory {parent} above the image pool is owned by "
                                    f"uid {st.st_uid}")
            if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
                raise refuse(name, f"directory {parent} above the image pool is writable "
                                    "by group or others")
            if parent == os.path.dirname(parent):
                return
            parent = os.path.dirname(parent)

    def _verify_checksums(self, image: Image) -> None:
        """sha256 of every file must match; verified results are cached when configured."""
        cache = ChecksumCache(self.checksum_cache) if self.checksum_cache else None
        try:
            for role, f in image.files():
                self._verify_one(image.name, role, f, cache)
        finally:
            if cache is not None:
                cache.save()

    def _verify_one(self, name: str, role: str, f: ImageFile,
                    cache: ChecksumCache | None) -> None:
        label = self._rel(f.path)
        before = lstat_in_pool(name, f.path, f"{role} {label}")
        if cache is not None and cache.lookup(f.path, before) == f.sha256:
            return
        try:
            actual = sha256_file(f.path)
        except OSError as exc:
            raise refuse(name, f"cannot read {role} {label}: {exc.strerror or exc}") from None
        if actual != f.sha256:
            raise refuse(name, f"{role} {label} does not match its sha256 "
                                f"(expected {f.sha256}, got {actual})")
        after = lstat_in_pool(name, f.path, f"{role} {label}")
        if cache is not None and identity(before) == identity(after):
            cache.store(f.path, after, actual)
