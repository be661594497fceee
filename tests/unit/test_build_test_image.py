"""Unit tests of scripts/build-test-image: its cpio writer, descriptor and idempotent build."""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import importlib.util
import io
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-test-image"


def load_script():
    """Imports the extension-less script as a module (it has no vtorque imports)."""
    loader = importlib.machinery.SourceFileLoader("build_test_image", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up here
    loader.exec_module(module)
    return module


bti = load_script()


def cpio_listing(archive: bytes, verbose: bool = False) -> list[str]:
    """What the cpio command lists in a newc archive."""
    argv = ["cpio", "-it" + ("v" if verbose else ""), "--quiet"]
    proc = subprocess.run(argv, input=archive, capture_output=True, timeout=30, check=True)
    return proc.stdout.decode().splitlines()


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6


needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="the cpio command is absent")


# --- pure parts ----------------------------------------------------------------------------

@needs_cpio
def test_cpio_writer_archive_is_listed_by_cpio() -> None:
    buf = io.BytesIO()
    cpio = bti.CpioWriter(buf)
    cpio.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    cpio.add_file("/lib/modules/v/kernel/a.ko", b"x" * 5)  # parents come first, by themselves
    cpio.add_symlink("bin/sh", "/bin/busybox")
    cpio.add_char_device("dev/console", 5, 1)
    cpio.close()
    archive = buf.getvalue()
    assert len(archive) % 4 == 0
    assert cpio_listing(archive) == [
        "init", "lib", "lib/modules", "lib/modules/v", "lib/modules/v/kernel",
        "lib/modules/v/kernel/a.ko", "bin", "bin/sh", "dev", "dev/console"]
    verbose = cpio_listing(archive, verbose=True)

    def line_for(name: str) -> str:
        return next(line for line in verbose
                    if line.endswith(" " + name) or f" {name} -> " in line)

    assert line_for("init").startswith("-rwxr-xr-x")
    assert line_for("lib/modules/v/kernel/a.ko").startswith("-rw-r--r--")
    assert line_for("lib/modules").startswith("drwxr-xr-x")
    assert line_for("bin/sh").startswith("l") and line_for("bin/sh").endswith("-> /bin/busybox")
    assert line_for("dev/console").startswith("crw-------")
    assert "5,   1" in line_for("dev/console")


@needs_cpio
def test_cpio_writer_file_contents_round_trip() -> None:
    buf = io.BytesIO()
    cpio = bti.CpioWriter(buf)
    data = bytes(range(256)) * 3 + b"odd"  # a length that needs padding
    cpio.add_file("etc/blob", data)
    cpio.close()
    proc = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "etc/blob"],
                          input=buf.getvalue(), capture_output=True, timeout=30, check=True)
    assert proc.stdout == data


def test_cpio_writer_refuses_duplicates_and_escapes() -> None:
    cpio = bti.CpioWriter(io.BytesIO())
    cpio.add_file("etc/a", b"")
    with pytest.raises(ValueError, match="duplicate"):
        cpio.add_file("/etc/a", b"")
    with pytest.raises(ValueError, match="bad archive path"):
        cpio.add_file("etc/../../x", b"")
    assert "etc/a" in cpio and "etc" in cpio


def test_descriptor_has_the_exact_shape_and_hashes() -> None:
    k, i = "a" * 64, "b" * 64
    text = bti.descriptor_text("testguest", k, i)
    assert text == (
        "name: testguest\n"
        "kind: kernel\n"
        "distro: debian\n"
        "arch: x86_64\n"
        f"kernel: {{file: testguest.vmlinuz, sha256: {k}}}\n"
        f"initrd: {{file: testguest.initrd, sha256: {i}}}\n"
        'cmdline: "console=ttyS0 panic=-1 quiet"\n')
    assert bti.parse_descriptor_hashes(text) == {
        "kernel": ("testguest.vmlinuz", k), "initrd": ("testguest.initrd", i)}


def test_parse_show_depends() -> None:
    out = ("insmod /lib/modules/v/kernel/drivers/virtio/virtio_ring.ko \n"
           "insmod /lib/modules/v/kernel/drivers/virtio/virtio.ko opt=1\n")
    assert bti.parse_show_depends(out, "v") == [
        Path("/lib/modules/v/kernel/drivers/virtio/virtio_ring.ko"),
        Path("/lib/modules/v/kernel/drivers/virtio/virtio.ko")]
    assert bti.parse_show_depends("builtin af_packet\n", "v") is None
    with pytest.raises(bti.BuildError, match="unexpected modprobe output"):
        bti.parse_show_depends("install /bin/true\n", "v")


def test_newest_kernel_version_is_the_default(tmp_path: Path) -> None:
    modules, boot = tmp_path / "modules", tmp_path / "boot"
    for version in ("6.9.0-1-amd64", "6.10.0-1-amd64", "7.0.0-1-amd64"):
        (modules / version).mkdir(parents=True)
    boot.mkdir()
    for version in ("6.9.0-1-amd64", "6.10.0-1-amd64"):  # 7.0 has no vmlinuz: not a choice
        (boot / f"vmlinuz-{version}").write_bytes(b"k")
    assert bti.default_kernel_version(modules, boot) == "6.10.0-1-amd64"
    with pytest.raises(bti.BuildError, match="no kernel found"):
        bti.default_kernel_version(tmp_path / "none", boot)


def test_dynamic_busybox_is_refused() -> None:
    dynamic = Path(sys.executable).resolve()  # a dynamically linked ELF on Debian
    with pytest.raises(bti.BuildError, match="dynamically linked"):
        bti.check_static_elf(dynamic)


def test_init_loads_modules_in_the_given_order() -> None:
    modules = [bti.Module("virtio_ring", Path("/x/virtio_ring.ko"), "kernel/virtio_ring.ko"),
               bti.Module("virtio_pci", Path("/x/virtio_pci.ko"), "kernel/virtio_pci.ko")]
    text = bti.init_script("v1", modules)
    first = text.index("load /lib/modules/v1/kernel/virtio_ring.ko virtio_ring\n")
    assert first < text.index("load /lib/modules/v1/kernel/virtio_pci.ko virtio_pci\n")
    assert text.startswith("#!/bin/sh\n")
    assert 'echo "vtorque-ready $token" > /dev/console' in text
    assert text.rstrip().endswith("exec /bin/busybox init")


def test_main_reports_a_missing_kernel_in_one_line(capsys: pytest.CaptureFixture,
                                                   tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("main() refuses to run as non-root before it looks for the kernel")
    code = bti.main(["--pool", str(tmp_path / "pool"), "--kernel-version", "0.0.0-none"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines() == [
        "build-test-image: error: /boot/vmlinuz-0.0.0-none not found "
        "(install linux-image-0.0.0-none)"]


# --- a real build into tmp_path --------------------------------------------------------------

def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the build writes root-owned files and needs root"
    if not list(Path("/boot").glob("vmlinuz-*")):
        return "/boot has no vmlinuz (install linux-image-amd64)"
    if not any(p.is_file() for p in bti.BUSYBOX_CANDIDATES):
        return "no /bin/busybox (install busybox-static)"
    if not any(p.is_file() for p in bti.MODPROBE_CANDIDATES):
        return "no modprobe (install kmod)"
    if shutil.which("cpio") is None:
        return "the cpio command is absent"
    return None


needs_build = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pool = tmp_path_factory.mktemp("images") / "pool"
    version = bti.default_kernel_version()
    summary = bti.build(pool, "testguest", version)
    assert summary.startswith("built testguest")
    return pool, version


@needs_build
def test_build_files_modes_and_descriptor(built: tuple[Path, str]) -> None:
    pool, version = built
    assert stat.S_IMODE(pool.stat().st_mode) == 0o755 and pool.stat().st_uid == 0
    names = {p.name for p in pool.iterdir()}
    assert names == {"testguest.vmlinuz", "testguest.initrd", "testguest.yaml",
                     "testguest.recipe"}  # no temporaries left behind
    for path in pool.iterdir():
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o644, 0, 0), path
    assert (pool / "testguest.vmlinuz").read_bytes() == \
        Path(f"/boot/vmlinuz-{version}").read_bytes()
    hashes = bti.parse_descriptor_hashes((pool / "testguest.yaml").read_text())
    for key, file in (("kernel", "testguest.vmlinuz"), ("initrd", "testguest.initrd")):
        assert hashes[key] == (file, hashlib.sha256((pool / file).read_bytes()).hexdigest())


@needs_build
def test_initrd_contents(built: tuple[Path, str]) -> None:
    pool, version = built
    archive = gzip.decompress((pool / "testguest.initrd").read_bytes())
    listing = set(cpio_listing(archive))
    for needed in ("init", "bin/busybox", "bin/sh", "dev/console", "etc/inittab",
                   "etc/udhcpc.script", "etc/acpi/PWRF/00000080"):
        assert needed in listing, needed
    init = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "init"], input=archive,
                          capture_output=True, timeout=30, check=True).stdout.decode()
    loads = [line.split()[1] for line in init.splitlines() if line.startswith("load /")]
    assert all(path.lstrip("/") in listing for path in loads)
    names = [Path(path).name for path in loads]
    # Dependencies before dependents, as modprobe --show-depends ordered them.
    for dep, user in (("virtio_ring.ko", "virtio_pci.ko"), ("virtio.ko", "virtio_net.ko"),
                      ("9pnet.ko", "9pnet_virtio.ko"), ("jbd2.ko", "ext4.ko"),
                      ("cdrom.ko", "isofs.ko")):
        assert names.index(dep) < names.index(user)
    assert len(names) == len(set(names))
    assert size_mb(pool / "testguest.initrd") < 8


@needs_build
def test_second_run_is_a_quick_no_op(built: tuple[Path, str]) -> None:
    pool, version = built
    before = {p.name: p.stat().st_mtime_ns for p in pool.iterdir()}
    start = time.monotonic()
    summary = bti.build(pool, "testguest", version)
    assert time.monotonic() - start < 1.0
    assert summary == f"testguest in {pool} is up to date (kernel {version})"
    assert {p.name: p.stat().st_mtime_ns for p in pool.iterdir()} == before


@needs_build
def test_a_damaged_image_is_rebuilt_identically(built: tuple[Path, str]) -> None:
    pool, version = built
    initrd = pool / "testguest.initrd"
    good = initrd.read_bytes()
    initrd.write_bytes(b"damaged")
    summary = bti.build(pool, "testguest", version)
    assert summary.startswith("built testguest")
    assert initrd.read_bytes() == good  # the build is reproducible byte for byte
