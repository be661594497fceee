"""Unit tests of vtorque.images: the catalog of admin-authorized images (faults 15 and 16)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from vtorque import images
import vtorque.images.catalog  # noqa: F401  (patched below)
import vtorque.images.checksums  # noqa: F401
from vtorque.errors import ImageError
from vtorque.images import Catalog

NOBODY = 65534
UID = os.getuid()
needs_root = pytest.mark.skipif(UID != 0, reason="chown to another uid needs root")

# magic, version, backing_file_offset, backing_file_size, cluster_bits, size, crypt_method,
# l1_size, l1_table_offset, refcount_table_offset, refcount_table_clusters, nb_snapshots,
# snapshots_offset, incompatible, compatible, autoclear, refcount_order, header_length
_QCOW2_V3 = ">4sIQIIQIIQQIIQQQQII"


def qcow2_bytes(backing_offset: int = 0, incompatible: int = 0, extensions: bytes = b"") -> bytes:
    """A minimal qcow2 v3 header, as far as the catalog reads it, plus extensions."""
    header = struct.pack(_QCOW2_V3, b"QFI\xfb", 3, backing_offset, 0, 16, 1 << 30, 0,
                         0, 0, 0, 0, 0, 0, incompatible, 0, 0, 4, 104)
    assert len(header) == 104
    return header + extensions + struct.pack(">II", 0, 0)


def qcow2_extension(ext_type: int, data: bytes) -> bytes:
    padded = data + b"\0" * (-len(data) % 8)
    return struct.pack(">II", ext_type, len(data)) + padded


RAW_MBR = b"\0" * 510 + b"\x55\xaa" + b"\0" * 512


class Pool:
    """A throwaway pool in tmp_path with helpers to add files and descriptors."""

    def __init__(self, root: Path):
        self.root = root / "pool"
        self.root.mkdir(mode=0o755)
        os.chmod(self.root, 0o755)

    def add_file(self, rel: str, data: bytes) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o644)
        return hashlib.sha256(data).hexdigest()

    def add_descriptor(self, name: str, text: str) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        os.chmod(path, 0o644)
        return path

    def add_kernel_image(self, name: str = "testguest", extra: str = "") -> None:
        k = self.add_file(f"{name}.vmlinuz", b"kernel bytes")
        i = self.add_file(f"{name}.initrd", b"initrd bytes")
        self.add_descriptor(name, f"""\
name: {name}
kind: kernel
distro: debian
arch: x86_64
kernel: {{file: {name}.vmlinuz, sha256: '{k}'}}
initrd: {{file: {name}.initrd, sha256: '{i}'}}
cmdline: "console=ttyS0 quiet"
{extra}""")

    def add_disk_image(self, name: str, data: bytes | None, fmt: str = "qcow2",
                       file: str | None = None, sha: str | None = None,
                       kind: str = "linux", distro: str = "debian", extra: str = "") -> None:
        file = file or f"{name}.{fmt}"
        digest = self.add_file(file, data) if data is not None else ""
        digest = sha if sha is not None else digest
        self.add_descriptor(name, f"""\
name: {name}
kind: {kind}
distro: {distro}
arch: x86_64
disk: {{file: {file}, format: {fmt}, sha256: '{digest}'}}
{extra}""")

    def catalog(self, **kwargs) -> Catalog:
        return Catalog(str(self.root), owner_uid=UID, **kwargs)


@pytest.fixture
def pool(tmp_path: Path) -> Pool:
    return Pool(tmp_path)


# --- accepted images -----------------------------------------------------------------------

def test_kernel_image_authorizes(pool: Pool) -> None:
    pool.add_kernel_image()
    image = pool.catalog().authorize("testguest")
    assert image.kind == "kernel" and image.distro == "debian" and image.arch == "x86_64"
    assert image.kernel is not None and image.kernel.path == str(pool.root / "testguest.vmlinuz")
    assert image.initrd is not None and image.initrd.format is None
    assert image.disk is None
    assert image.cmdline == "console=ttyS0 quiet"
    assert image.descriptor == str(pool.root / "testguest.yaml")


def test_qcow2_linux_image_authorizes(pool: Pool) -> None:
    pool.add_disk_image("debian12", qcow2_bytes())
    image = pool.catalog().authorize("debian12")
    assert image.disk is not None
    assert image.disk.format == "qcow2"
    assert image.disk.path == str(pool.root / "debian12.qcow2")
    assert image.kernel is None and image.initrd is None and image.cmdline == ""


def test_raw_osv_image_in_subdirectory_authorizes(pool: Pool) -> None:
    pool.add_disk_image("osvapp", RAW_MBR, fmt="raw", file="osv/app.img", kind="osv")
    image = pool.catalog().authorize("osvapp")
    assert image.disk is not None and image.disk.path == str(pool.root / "osv" / "app.img")


def test_names_and_names_for_distro(pool: Pool) -> None:
    assert pool.catalog().names() == []
    pool.add_kernel_image("k1")
    pool.add_disk_image("d1", qcow2_bytes(), distro="centos")
    pool.add_disk_image("d2", qcow2_bytes(), distro="centos")
    pool.add_descriptor("broken", "name: broken\nkind: [\n")
    pool.add_file("not-a-descriptor.txt", b"x")
    catalog = pool.catalog()
    assert catalog.names() == ["broken", "d1", "d2", "k1"]
    assert catalog.names_for_distro("centos") == ["d1", "d2"]
    assert catalog.names_for_distro("debian") == ["k1"]
    assert catalog.names_for_distro("arch") == []


def test_describe_checks_no_ownership_checksums_or_headers(pool: Pool) -> None:
    pool.add_disk_image("d", b"QFI\xfb not really", fmt="raw", sha="0" * 64)
    os.chmod(pool.root / "d.raw", 0o666)
    image = pool.catalog().describe("d")
    assert image.disk is not None and image.disk.sha256 == "0" * 64


# --- the name the user gave ----------------------------------------------------------------

@pytest.mark.parametrize("name, reason", [
    ("../testguest", "only catalog names are accepted, not paths"),
    ("sub/testguest", "only catalog names are accepted, not paths"),
    ("/var/lib/vtorque/images/testguest.qcow2", "only catalog names are accepted, not paths"),
    ("http://evil.example/x.qcow2", "only catalog names are accepted, not URLs"),
    ("-rf", "only catalog names are accepted"),
    ("", "only catalog names are accepted"),
])
def test_non_catalog_names_are_refused(pool: Pool, name: str, reason: str) -> None:
    pool.add_kernel_image()
    for check in (pool.catalog().describe, pool.catalog().authorize):
        with pytest.raises(ImageError, match=reason):
            check(name)


def test_unknown_name_lists_available(pool: Pool) -> None:
    pool.add_kernel_image("a")
    pool.add_kernel_image("b")
    with pytest.raises(ImageError, match=r"image 'x' is not in the authorized image pool "
                                         r"\(available: a, b\)"):
        pool.catalog().authorize("x")


# --- descriptor paths and symlinks ---------------------------------------------------------

def test_descriptor_path_escaping_pool(pool: Pool, tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"x")
    pool.add_disk_image("esc", None, file="../secret", sha="0" * 64)
    with pytest.raises(ImageError,
                       match=r"image 'esc': file \.\./secret is outside the image pool"):
        pool.catalog().describe("esc")


def test_descriptor_absolute_path(pool: Pool) -> None:
    pool.add_disk_image("abs", None, file="/etc/passwd", sha="0" * 64)
    with pytest.raises(ImageError, match="must be relative to the image pool"):
        pool.catalog().describe("abs")


def test_symlink_out_of_pool(pool: Pool, tmp_path: Path) -> None:
    outside = tmp_path / "outside.qcow2"
    outside.write_bytes(qcow2_bytes())
    pool.add_disk_image("out", None, sha=hashlib.sha256(qcow2_bytes()).hexdigest())
    os.symlink(outside, pool.root / "out.qcow2")
    with pytest.raises(ImageError, match=r"out\.qcow2 is a symlink"):
        pool.catalog().describe("out")


def test_symlink_inside_pool(pool: Pool) -> None:
    digest = pool.add_file("real.qcow2", qcow2_bytes())
    pool.add_disk_image("in", None, file="link.qcow2", sha=digest)
    os.symlink("real.qcow2", pool.root / "link.qcow2")
    with pytest.raises(ImageError, match=r"link\.qcow2 is a symlink"):
        pool.catalog().authorize("in")


def test_symlinked_directory_inside_pool(pool: Pool) -> None:
    digest = pool.add_file("real/disk.qcow2", qcow2_bytes())
    os.symlink("real", pool.root / "alias")
    pool.add_disk_image("dir", None, file="alias/disk.qcow2", sha=digest)
    with pytest.raises(ImageError, match=r"alias is a symlink"):
        pool.catalog().describe("dir")


def test_descriptor_symlink(pool: Pool, tmp_path: Path) -> None:
    pool.add_kernel_image()
    os.symlink(pool.root / "testguest.yaml", pool.root / "alias.yaml")
    with pytest.raises(ImageError, match=r"descriptor .*alias\.yaml is a symlink"):
        pool.catalog().describe("alias")


def test_missing_file(pool: Pool) -> None:
    pool.add_disk_image("gone", b"", sha="0" * 64)
    os.unlink(pool.root / "gone.qcow2")
    with pytest.raises(ImageError, match=r"file gone\.qcow2 does not exist"):
        pool.catalog().describe("gone")


def test_file_not_regular(pool: Pool) -> None:
    (pool.root / "adir").mkdir()
    pool.add_disk_image("d", None, file="adir", sha="0" * 64)
    with pytest.raises(ImageError, match="file adir is not a regular file"):
        pool.catalog().describe("d")


# --- ownership and permissions -------------------------------------------------------------

@needs_root
def test_file_not_owned_by_root(pool: Pool) -> None:
    pool.add_kernel_image()
    os.chown(pool.root / "testguest.vmlinuz", NOBODY, -1)
    pool.catalog().describe("testguest")
    with pytest.raises(ImageError, match=rf"file testguest\.vmlinuz is owned by uid {NOBODY}"):
        Catalog(str(pool.root)).authorize("testguest")


@needs_root
def test_descriptor_not_owned_by_root(pool: Pool) -> None:
    pool.add_kernel_image()
    os.chown(pool.root / "testguest.yaml", NOBODY, -1)
    with pytest.raises(ImageError, match=rf"descriptor .*testguest\.yaml is owned by uid {NOBODY}"):
        Catalog(str(pool.root)).authorize("testguest")


def test_group_writable_file(pool: Pool) -> None:
    pool.add_kernel_image()
    os.chmod(pool.root / "testguest.initrd", 0o664)
    with pytest.raises(ImageError, match=r"file testguest\.initrd is writable by group or others"):
        pool.catalog().authorize("testguest")


def test_group_writable_subdirectory(pool: Pool) -> None:
    pool.add_disk_image("sub", qcow2_bytes(), file="sub/disk.qcow2")
    os.chmod(pool.root / "sub", 0o775)
    with pytest.raises(ImageError, match="file sub is writable by group or others"):
        pool.catalog().authorize("sub")


def test_group_writable_pool_dir(pool: Pool) -> None:
    pool.add_kernel_image()
    os.chmod(pool.root, 0o775)
    with pytest.raises(ImageError, match="image pool .* is writable by group or others"):
        pool.catalog().authorize("testguest")


@needs_root
def test_pool_parent_owned_by_other_user(tmp_path: Path) -> None:
    parent = tmp_path / "user"
    parent.mkdir()
    pool = Pool(parent)
    pool.add_kernel_image()
    os.chown(parent, NOBODY, -1)
    with pytest.raises(ImageError, match=rf"image pool .*/user is owned by uid {NOBODY}, not root"):
        Catalog(str(pool.root)).authorize("testguest")


# --- checksums -----------------------------------------------------------------------------

def test_wrong_sha256(pool: Pool) -> None:
    pool.add_disk_image("bad", qcow2_bytes(), sha="ab" * 32)
    catalog = pool.catalog()
    with pytest.raises(ImageError, match=r"disk bad\.qcow2 does not match its sha256"):
        catalog.authorize("bad")
    assert catalog.authorize("bad", verify_checksums=False).name == "bad"


def test_checksum_cache_hit_avoids_rehashing(pool: Pool, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pool.add_kernel_image()
    calls: list[str] = []
    real = images.catalog.sha256_file

    def counting(path: str, fd: int | None = None) -> str:
        calls.append(path)
        return real(path, fd)

    monkeypatch.setattr(images.catalog, "sha256_file", counting)
    cache_dir = tmp_path / "cache" / "checksums"
    catalog = pool.catalog(checksum_cache=str(cache_dir))
    catalog.authorize("testguest")
    assert len(calls) == 2
    assert os.stat(cache_dir).st_mode & 0o777 == 0o700
    catalog.authorize("testguest")
    pool.catalog(checksum_cache=str(cache_dir)).authorize("testguest")
    assert len(calls) == 2

    kernel = pool.root / "testguest.vmlinuz"
    st = os.stat(kernel)
    os.utime(kernel, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    catalog.authorize("testguest")
    assert calls[2:] == [str(kernel)]

    kernel.write_bytes(b"KERNEL BYTES")  # same size, new content
    with pytest.raises(ImageError, match=r"kernel testguest\.vmlinuz does not match its sha256"):
        catalog.authorize("testguest")
    assert calls[3:] == [str(kernel)]


def test_corrupt_checksum_cache_is_ignored(pool: Pool, tmp_path: Path) -> None:
    pool.add_kernel_image()
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    (cache_dir / images.checksums.CACHE_FILE).write_text("{not json")
    catalog = pool.catalog(checksum_cache=str(cache_dir))
    catalog.authorize("testguest")
    data = json.loads((cache_dir / images.checksums.CACHE_FILE).read_text())
    assert len(data["entries"]) == 2
    (cache_dir / images.checksums.CACHE_FILE).write_text('{"entries": {"x": 1}}')
    catalog.authorize("testguest")


def test_cache_entry_with_wrong_checksum_is_not_trusted(pool: Pool, tmp_path: Path) -> None:
    pool.add_disk_image("d", qcow2_bytes(), sha="ab" * 32)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    st = os.lstat(pool.root / "d.qcow2")
    entry = {"id": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
             "sha256": "cd" * 32}
    (cache_dir / images.checksums.CACHE_FILE).write_text(
        json.dumps({"entries": {str(pool.root / "d.qcow2"): entry}}))
    with pytest.raises(ImageError, match="does not match its sha256"):
        pool.catalog(checksum_cache=str(cache_dir)).authorize("d")


# --- disk headers --------------------------------------------------------------------------

@pytest.mark.parametrize("data, reason", [
    (qcow2_bytes(backing_offset=512), "has a backing file"),
    (qcow2_bytes(incompatible=1 << 2), "has an external data file"),
    (qcow2_bytes(extensions=qcow2_extension(0x6803F857, b"\0" * 16)
                 + qcow2_extension(0x44415441, b"/etc/shadow")), "has an external data file"),
    (RAW_MBR, "is not a qcow2 image"),
])
def test_malicious_qcow2_is_refused(pool: Pool, data: bytes, reason: str) -> None:
    pool.add_disk_image("evil", data)
    with pytest.raises(ImageError, match=rf"image 'evil': disk evil\.qcow2 {reason}"):
        pool.catalog().authorize("evil", verify_checksums=False)


@pytest.mark.parametrize("magic, fmt", [
    (b"QFI\xfb", "qcow2"),
    (b"QED\x00", "QED"),
    (b"KDMV", "VMDK"),
    (b"# Disk DescriptorFile", "VMDK descriptor"),
    (b"vhdxfile", "VHDX"),
    (b"LUKS\xba\xbe", "LUKS"),
    (b"\0" * 64 + b"\x7f\x10\xda\xbe", "VDI"),
])
def test_raw_with_image_header_is_refused(pool: Pool, magic: bytes, fmt: str) -> None:
    pool.add_disk_image("raw", magic + RAW_MBR, fmt="raw")
    with pytest.raises(ImageError, match=rf"raw image raw\.raw carries a {fmt} header"):
        pool.catalog().authorize("raw")


# --- descriptor shape ----------------------------------------------------------------------

def test_unknown_key(pool: Pool) -> None:
    pool.add_kernel_image(extra="backing: /etc/passwd\n")
    with pytest.raises(ImageError, match=r"descriptor .*testguest\.yaml: unknown key 'backing'"):
        pool.catalog().describe("testguest")


def test_unknown_nested_key(pool: Pool) -> None:
    pool.add_disk_image("d", qcow2_bytes())
    text = (pool.root / "d.yaml").read_text().replace("format: qcow2", "format: qcow2, x: 1")
    pool.add_descriptor("d", text)
    with pytest.raises(ImageError, match=r"d\.yaml: unknown key 'disk\.x'"):
        pool.catalog().describe("d")


def test_missing_disk_for_linux(pool: Pool) -> None:
    pool.add_descriptor("nodisk", "name: nodisk\nkind: linux\ndistro: debian\narch: x86_64\n")
    with pytest.raises(ImageError, match=r"nodisk\.yaml: missing key 'disk'"):
        pool.catalog().describe("nodisk")


def test_kernel_key_on_linux(pool: Pool) -> None:
    k = pool.add_file("k", b"k")
    pool.add_disk_image("lk", qcow2_bytes(), extra=f"kernel: {{file: k, sha256: '{k}'}}\n")
    with pytest.raises(ImageError, match=r"lk\.yaml: key 'kernel' is not allowed for kind 'linux'"):
        pool.catalog().describe("lk")


def test_descriptor_name_mismatch(pool: Pool) -> None:
    pool.add_kernel_image("other")
    os.rename(pool.root / "other.yaml", pool.root / "renamed.yaml")
    with pytest.raises(ImageError, match=r"renamed\.yaml: key 'name' is 'other' but must equal"):
        pool.catalog().describe("renamed")


@pytest.mark.parametrize("extra_or_edit, reason", [
    (("format: qcow2, ", ""), r"missing key 'disk\.format'"),
    (("format: qcow2", "format: vmdk"), r"key 'disk\.format' must be one of qcow2, raw"),
    (("arch: x86_64", "arch: aarch64"), r"key 'arch' must be one of x86_64"),
    (("kind: linux", "kind: windows"), r"key 'kind' must be one of linux, kernel, osv"),
    (("distro: debian", "distro: 12"), r"key 'distro' must be a string"),
    (("distro: debian", "distro: ../x"), r"key 'distro' must be a name"),
    (("arch: x86_64\n", ""), r"missing key 'arch'"),
])
def test_descriptor_shape_errors(pool: Pool, extra_or_edit: tuple[str, str], reason: str) -> None:
    pool.add_disk_image("d", qcow2_bytes())
    text = (pool.root / "d.yaml").read_text()
    old, new = extra_or_edit
    assert old in text
    pool.add_descriptor("d", text.replace(old, new))
    with pytest.raises(ImageError, match=rf"descriptor .*d\.yaml: {reason}"):
        pool.catalog().describe("d")


def test_bad_sha256_value(pool: Pool) -> None:
    pool.add_disk_image("d", qcow2_bytes(), sha="xyz")
    with pytest.raises(ImageError, match=r"key 'disk\.sha256' must be 64 hexadecimal digits"):
        pool.catalog().describe("d")


@pytest.mark.parametrize("cmdline, reason", [
    ('"console=ttyS0 \\"x\\""', "printable ASCII without quotes"),
    ('"console=ttyS0\\nroot=/dev/sda"', "printable ASCII without quotes"),
    ('"' + "a" * 1025 + '"', "longer than 1024"),
])
def test_bad_cmdline(pool: Pool, cmdline: str, reason: str) -> None:
    pool.add_kernel_image()
    text = (pool.root / "testguest.yaml").read_text()
    pool.add_descriptor("testguest", text.replace('"console=ttyS0 quiet"', cmdline))
    with pytest.raises(ImageError, match=rf"key 'cmdline' .*{reason}"):
        pool.catalog().describe("testguest")


def test_descriptor_not_a_mapping(pool: Pool) -> None:
    pool.add_descriptor("list", "- a\n- b\n")
    with pytest.raises(ImageError, match=r"list\.yaml: must be a mapping"):
        pool.catalog().describe("list")
