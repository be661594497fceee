"""The catalog of admin-authorized images.

A pool directory holds one descriptor ``<name>.yaml`` per image plus the image files it names.
Users may only ask for catalog names, never paths or URLs. Two gates use this module:

- ``Catalog.describe`` (submit side, runs as the user): parses and shape-checks a descriptor and
  checks that every file it names is a regular file inside the pool reached without symlinks.
- ``Catalog.authorize`` (root side): all of the above, plus ownership and permissions of the pool
  (and its ancestors), descriptor and files (one hard link each), the disk header (qcow2 without
  backing or external data file, raw without any known image header; never probed), and the
  sha256 of every file, all read through one descriptor per file that holds the inode its
  path names before and after. The Image records each file's identity; ``verify_unchanged``
  tells whether the files are still those (to be called once the guests have opened them).

Every refusal is one ImageError line: ``image 'x': <reason>``.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import Any

import yaml

from vtorque.errors import ImageError
from vtorque.images.checksums import ChecksumCache
from vtorque.images.descriptor import TOP_KEYS, Shape
from vtorque.images.formats import check_disk_header, header_size
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
    check_unchanged,
    components,
    lstat_in_pool,
    open_verified,
    read_head,
    read_head_fd,
    sha256_file,
)
from vtorque.images.pool_files import identity as file_identity

_DESCRIPTOR_MAX = 1 << 20


class Catalog:
    """The admin-authorized images of one pool directory."""

    def __init__(self, pool_dir: str, checksum_cache: str | None = None, owner_uid: int = 0):
        self.pool_dir = pool_dir
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
        self._check_pool_trusted(name)
        image = self.describe(name)
        what = f"descriptor {image.descriptor}"
        check_owner(name, lstat_in_pool(name, image.descriptor, what), what, self.owner_uid)
        for _role, f in image.files():
            for path in components(self.pool, f.path):
                what = f"file {self._rel(path)}"
                check_owner(name, lstat_in_pool(name, path, what), what, self.owner_uid)
        cache = (ChecksumCache(self.checksum_cache)
                 if self.checksum_cache and verify_checksums else None)
        verified = {}
        try:
            for role, f in image.files():
                verified[role] = self._verify_file(name, role, f, cache, verify_checksums)
        finally:
            if cache is not None:
                cache.save()
        return dataclasses.replace(image, **verified)

    def verify_unchanged(self, image: Image) -> None:
        """ImageError unless every file of an authorized `image` is still the very file
        authorize verified (same device, inode, size, mtime, ctime; one link). Called
        after the files were used (qemu-img and QEMU open them by path), it turns a
        replacement or rewrite in between into a refusal instead of a guest."""
        for role, f in image.files():
            label = f"{role} {self._rel(f.path)}"
            st = lstat_in_pool(image.name, f.path, label)
            if f.identity is None or file_identity(st) != tuple(f.identity) \
                    or st.st_nlink != 1:
                raise refuse(image.name, f"{label} changed after it was verified")

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
            snapshot=shape.flag("snapshot"),
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
        """The pool as configured must be a trusted directory (files.resolve_trusted:
        root's all the way up, no symlink a user could change), resolving to the pool
        this catalog reads, and owner_uid's."""
        from vtorque.errors import NodeError
        from vtorque.files import DIR, resolve_trusted
        try:
            resolved, st = resolve_trusted(os.path.abspath(self.pool_dir), DIR)
        except NodeError as exc:
            raise refuse(name, f"image pool {exc}") from None
        if resolved != self.pool:
            raise refuse(name, f"image pool {self.pool_dir} now resolves to {resolved}, "
                                f"not {self.pool}")
        check_owner(name, st, f"image pool {self.pool}", self.owner_uid)

    def _verify_file(self, name: str, role: str, f: ImageFile, cache: ChecksumCache | None,
                     verify_checksums: bool) -> ImageFile:
        """Header and sha256 of one file, read through one verified descriptor; the file
        with its identity."""
        label = self._rel(f.path)
        what = f"{role} {label}"
        fd, st = open_verified(name, f.path, what, self.owner_uid)
        try:
            if role == "disk":
                try:
                    head = read_head_fd(fd, header_size(f.format))
                except OSError as exc:
                    raise refuse(name, f"cannot read disk {label}: "
                                        f"{exc.strerror or exc}") from None
                check_disk_header(name, label, f, head)
            if verify_checksums and (cache is None or cache.lookup(f.path, st) != f.sha256):
                try:
                    actual = sha256_file(f.path, fd)
                except OSError as exc:
                    raise refuse(name, f"cannot read {what}: {exc.strerror or exc}") from None
                if actual != f.sha256:
                    raise refuse(name, f"{what} does not match its sha256 "
                                        f"(expected {f.sha256}, got {actual})")
                check_unchanged(name, f.path, what, fd, st)
                if cache is not None:
                    cache.store(f.path, st, actual)
            else:
                check_unchanged(name, f.path, what, fd, st)
        finally:
            os.close(fd)
        return dataclasses.replace(f, identity=file_identity(st))
