"""What an authorized image is: its kind, files and checks of its name."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vtorque.errors import ImageError

KINDS = ("linux", "kernel", "osv")
ARCHES = ("x86_64",)
DISK_FORMATS = ("qcow2", "raw")
DESCRIPTOR_SUFFIX = ".yaml"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class ImageFile:
    """One file of an image: absolute normalized path inside the pool and its checksum."""

    path: str
    sha256: str
    format: str | None = None
    # (device, inode, size, mtime, ctime) of the file as authorize verified it: the file
    # used must still be this one (Catalog.verify_unchanged).
    identity: tuple[int, ...] | None = None


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
    # The admin lets guests of this image start from a saved template (vm/snapshot.py).
    snapshot: bool = False

    def files(self) -> list[tuple[str, ImageFile]]:
        """(role, file) of every file the image uses: disk, kernel, initrd."""
        roles = (("disk", self.disk), ("kernel", self.kernel), ("initrd", self.initrd))
        return [(role, f) for role, f in roles if f is not None]


def show(name: str) -> str:
    """A user-given name, quoted and escaped, cut short if long."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def refuse(name: str, reason: str) -> ImageError:
    return ImageError(f"image {show(name)}: {reason}")


def is_valid_name(name: object) -> bool:
    """Whether name follows the catalog name rule."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: str) -> None:
    """Refuse anything but a plain catalog name (paths, URLs, odd characters)."""
    if not isinstance(name, str):
        raise ImageError(f"image {name!r}: only catalog names are accepted")
    if "://" in name:
        raise refuse(name, "only catalog names are accepted, not URLs")
    if "/" in name or ".." in name or os.path.isabs(name):
        raise refuse(name, "only catalog names are accepted, not paths")
    if not is_valid_name(name):
        raise refuse(name, "only catalog names are accepted "
                            "(letters, digits, '.', '_', '-'; at most 64 characters)")
