"""Unit tests of the descriptor rules per kind (vtorque.images.descriptor): an OSv image
may name the same build's kernel and the loader's command line for direct kernel boot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vtorque.errors import ImageError
from vtorque.images import Catalog

OSV_CMDLINE = "--rootfs=rofs --power-off-on-abort /libhttpserver-api.so"


def osv_pool(tmp_path: Path, extra: str) -> Catalog:
    pool = tmp_path / "pool"
    pool.mkdir()
    os.chmod(pool, 0o755)
    digests = {}
    for name, data in (("osv.raw", b"\0" * 4096), ("osv.kernel.elf", b"\x7fELF kernel")):
        (pool / name).write_bytes(data)
        os.chmod(pool / name, 0o644)
        digests[name] = hashlib.sha256(data).hexdigest()
    (pool / "osv.yaml").write_text(
        "name: osv\nkind: osv\ndistro: osv\narch: x86_64\n"
        f"disk: {{file: osv.raw, format: raw, sha256: '{digests['osv.raw']}'}}\n"
        + extra.format(kernel=digests["osv.kernel.elf"]))
    return Catalog(str(pool), owner_uid=os.geteuid())


def test_osv_with_kernel_and_cmdline_is_accepted(tmp_path: Path) -> None:
    image = osv_pool(tmp_path, "kernel: {{file: osv.kernel.elf, sha256: '{kernel}'}}\n"
                               f'cmdline: "{OSV_CMDLINE}"\n').authorize("osv")
    assert image.kind == "osv" and image.kernel.path.endswith("osv.kernel.elf")
    assert image.cmdline == OSV_CMDLINE and image.disk is not None


def test_osv_without_a_kernel_is_still_a_valid_descriptor(tmp_path: Path) -> None:
    assert osv_pool(tmp_path, "").authorize("osv").kernel is None


@pytest.mark.parametrize("extra, reason", [
    ("kernel: {{file: osv.kernel.elf, sha256: '{kernel}'}}\n", "go together"),
    (f'cmdline: "{OSV_CMDLINE}"\n', "go together"),
    ("kernel: {{file: osv.kernel.elf, sha256: '{kernel}'}}\ncmdline: x\n"
     "initrd: {{file: osv.kernel.elf, sha256: '{kernel}'}}\n", "'initrd' is not allowed"),
])
def test_osv_kernel_rules(tmp_path: Path, extra: str, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        osv_pool(tmp_path, extra).describe("osv")


def test_linux_images_still_take_no_kernel(tmp_path: Path) -> None:
    catalog = osv_pool(tmp_path, "kernel: {{file: osv.kernel.elf, sha256: '{kernel}'}}\n"
                                 "cmdline: x\n")
    text = (Path(catalog.pool) / "osv.yaml").read_text().replace("kind: osv", "kind: linux")
    (Path(catalog.pool) / "osv.yaml").write_text(text)
    with pytest.raises(ImageError, match="'kernel' is not allowed for kind 'linux'"):
        catalog.describe("osv")
