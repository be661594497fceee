"""Attacks on the image pool: a second name for a pool file, a file swapped or rewritten
while it is verified, a file replaced after it was verified, a pool reached through a
link a user controls. Each is refused with one line; what was verified is what is used."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from vtorque.errors import ImageError
from vtorque.images import Catalog, catalog as catalog_mod

NOBODY = 65534


def add_kernel_image(pool: Path, name: str = "k") -> None:
    shas = {}
    for role in ("vmlinuz", "initrd"):
        data = f"{role} of {name}".encode()
        (pool / f"{name}.{role}").write_bytes(data)
        os.chmod(pool / f"{name}.{role}", 0o644)
        shas[role] = hashlib.sha256(data).hexdigest()
    (pool / f"{name}.yaml").write_text(
        f"name: {name}\nkind: kernel\ndistro: debian\narch: x86_64\n"
        f"kernel: {{file: {name}.vmlinuz, sha256: '{shas['vmlinuz']}'}}\n"
        f"initrd: {{file: {name}.initrd, sha256: '{shas['initrd']}'}}\n")
    os.chmod(pool / f"{name}.yaml", 0o644)


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool"
    path.mkdir()
    os.chmod(path, 0o755)
    add_kernel_image(path)
    return path


def test_the_pool_image_authorizes_with_the_identity_of_each_file(pool: Path) -> None:
    image = Catalog(str(pool)).authorize("k")
    st = os.lstat(pool / "k.vmlinuz")
    assert image.kernel.identity == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                     st.st_ctime_ns)
    Catalog(str(pool)).verify_unchanged(image)


@pytest.mark.parametrize("linked", ["k.vmlinuz", "k.initrd", "k.yaml"])
def test_a_pool_file_with_a_second_name_is_refused(pool: Path, tmp_path: Path,
                                                   linked: str) -> None:
    """A hard link is the same file under another name, maybe outside the pool (a host
    file linked in, or a pool file linked out to where it can be watched)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(pool / linked, outside / linked)
    with pytest.raises(ImageError, match="has 2 hard links"):
        Catalog(str(pool)).authorize("k")


def test_a_file_swapped_while_it_is_hashed_is_refused(pool: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The old file hashes right, but the path names another file once hashing is done:
    the verified file would not be the file used."""
    evil = tmp_path / "evil"
    evil.write_bytes(b"evil kernel")
    os.chmod(evil, 0o644)
    real = catalog_mod.sha256_file

    def swap_then_hash(path: str, *args):
        if path.endswith("k.vmlinuz"):
            os.rename(evil, path)
        return real(path, *args)
    monkeypatch.setattr(catalog_mod, "sha256_file", swap_then_hash)
    with pytest.raises(ImageError,
                       match=r"kernel k\.vmlinuz (was replaced|changed) while being verified"):
        Catalog(str(pool)).authorize("k")


def test_a_file_rewritten_while_it_is_hashed_is_refused(pool: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = catalog_mod.sha256_file

    def hash_then_rewrite(path: str, *args):
        digest = real(path, *args)
        if path.endswith("k.initrd"):
            with open(path, "r+b") as handle:
                handle.write(b"I")
        return digest
    monkeypatch.setattr(catalog_mod, "sha256_file", hash_then_rewrite)
    with pytest.raises(ImageError, match=r"initrd k\.initrd changed while being verified"):
        Catalog(str(pool)).authorize("k")


def test_a_file_replaced_after_it_was_verified_is_refused_before_use(pool: Path,
                                                                     tmp_path: Path) -> None:
    catalog = Catalog(str(pool))
    image = catalog.authorize("k")
    other = tmp_path / "other"
    other.write_bytes((pool / "k.vmlinuz").read_bytes())     # same bytes, other file
    os.chmod(other, 0o644)
    os.rename(other, pool / "k.vmlinuz")
    with pytest.raises(ImageError, match=r"kernel k\.vmlinuz changed after it was verified"):
        catalog.verify_unchanged(image)


def test_a_file_rewritten_in_place_after_it_was_verified_is_refused(pool: Path) -> None:
    catalog = Catalog(str(pool))
    image = catalog.authorize("k")
    with open(pool / "k.initrd", "r+b") as handle:
        handle.write(b"I")
    with pytest.raises(ImageError, match=r"initrd k\.initrd changed after it was verified"):
        catalog.verify_unchanged(image)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_pool_reached_through_a_users_link_is_refused(pool: Path, tmp_path: Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    link = sticky / "images"
    link.symlink_to(pool)
    os.chown(link, NOBODY, NOBODY, follow_symlinks=False)
    with pytest.raises(ImageError, match="owned by uid 65534 in a directory others can"):
        Catalog(str(link)).authorize("k")


def test_an_unverified_image_is_never_taken_for_a_verified_one(pool: Path) -> None:
    """An Image that did not come from authorize carries no identities."""
    image = Catalog(str(pool)).describe("k")
    with pytest.raises(ImageError, match="changed after it was verified"):
        Catalog(str(pool)).verify_unchanged(image)
