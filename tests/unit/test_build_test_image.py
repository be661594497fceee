"""Unit tests of scripts/build-test-image: its cpio writer, descriptor and idempotent build."""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import importlib.util
import io
import os
import re
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
        'cmdline: "console=ttyS0 panic=-1 quiet"\n'
        "host_share: true\n"
            "snapshot: true\n")
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


# --- the /init's network, host root, seed files and sshd -------------------------------------

BUSYBOX = next((p for p in bti.BUSYBOX_CANDIDATES if p.is_file()), None)
needs_busybox = pytest.mark.skipif(BUSYBOX is None, reason="no busybox (install busybox-static)")

# Stand-ins for what the /init defines before its functions (say) and for what writes to the
# console (fail): the tests read both from stdout.
SHELL_STUBS = r"""
say() { echo "say: $*"; }
fail() { echo "vtorque-error $*"; failed=1; }
"""


def init_text() -> str:
    return bti.init_script("v1", [])


def run_functions(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Runs SCRIPT with busybox sh after the /init's functions, as the guest would."""
    text = bti.fill_in(bti.INIT_FUNCTIONS) + SHELL_STUBS + script
    return subprocess.run([str(BUSYBOX), "sh", "-c", text], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, check=False)


@needs_busybox
def test_init_is_valid_busybox_sh() -> None:
    proc = subprocess.run([str(BUSYBOX), "sh", "-n"], input=init_text(), capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"@[A-Z_]+@", init_text())  # every placeholder was filled in


def test_the_host_side_contract_names() -> None:
    # scripts and vtorque's host side write these: changing one breaks them.
    assert (bti.SEED_HOSTS, bti.SEED_HOST_KEY, bti.SEED_HOST_KEY_PUB, bti.SEED_AUTHORIZED_KEYS,
            bti.SEED_ENV, bti.SEED_HOSTFILE, bti.SEED_NODEFILE) == (
        "vtorque-hosts", "vtorque-ssh-host-key", "vtorque-ssh-host-key.pub",
        "vtorque-authorized-keys", "vtorque-env", "vtorque-hostfile", "vtorque-nodefile")
    text = init_text()
    for name in bti.CMDLINE_PARAMETERS:
        assert f"        {name}=*) " in text, name
    assert set(bti.CMDLINE_PARAMETERS) == {
        "vtorque.hostname", "vtorque.ready", "vtorque.net", "vtorque.ip", "vtorque.gw",
        "vtorque.mtu", "vtorque.hostroot", "vtorque.rdma", "vtorque.template"}
    # The host side's name for the Soft-RoCE device and the guest's must agree.
    from vtorque.ibverbs.transport import RXE_DEVICE
    assert bti.RXE_DEVICE == RXE_DEVICE


@needs_busybox
def test_parse_cmdline(tmp_path: Path) -> None:
    proc = run_functions(
        'parse_cmdline "console=ttyS0 vtorque.hostname=vt1-0 vtorque.ready=ab12 '
        'vtorque.ip=10.0.2.15/24 vtorque.gw=10.0.2.2 vtorque.mtu=1400 vtorque.hostroot=hr '
        'vtorque.net=dhcp vtorque.other=* quiet"\n'
        'echo "$host|$token|$ipaddr|$gw|$mtu|$hostroot|$net"\n'
        'parse_cmdline "console=ttyS0 vtorque.ready=cd34"\n'
        'echo "$host|$token|$ipaddr|$gw|$mtu|$hostroot|$net"\n', tmp_path)
    assert proc.stdout.splitlines() == ["vt1-0|ab12|10.0.2.15/24|10.0.2.2|1400|hr|dhcp",
                                        "|cd34|||||"]


def test_static_network_commands() -> None:
    text = init_text()
    assert 'must network ip link set eth0 mtu "$mtu"' in text
    assert 'must network ip addr add "$ipaddr" dev eth0' in text
    assert 'must network ip route add default via "$gw" dev eth0' in text
    assert 'fail "network failed: vtorque.ip=$ipaddr has no /PREFIX"' in text
    # Static wins over DHCP; DHCP works as before, a missing lease is not fatal.
    assert text.index('if [ -n "$ipaddr" ]') < text.index('elif [ "$net" = dhcp ]')
    assert 'udhcpc -i eth0 -q -n -t 5 -s /etc/udhcpc.script || say "no DHCP lease on eth0"' \
        in text


def test_hostroot_is_a_9p_lower_under_a_tmpfs_overlay() -> None:
    text = init_text()
    assert "overlay" in bti.REQUIRED_MODULES
    assert bti.HOSTROOT_MOUNT_OPTIONS.split(",")[:3] == ["trans=virtio", "version=9p2000.L",
                                                         "ro"]
    steps = [
        'mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose "$1" /host',
        "mount -t tmpfs -o mode=0755 tmpfs /rw",
        "mkdir -p /rw/upper /rw/work",
        "-o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work overlay /newroot",
        "mount -t proc proc $r/proc",
        "mount -t sysfs sysfs $r/sys",
        "mount -t devtmpfs devtmpfs $r/dev",
        "mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts $r/dev/pts",
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/dev/shm",
        "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs $r/run",
        "mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs $r/tmp",
        "rm -f $r/etc/$f && : > $r/etc/$f && chmod 0600 $r/etc/$f",  # no host hashes
    ]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    assert 'if [ -n "$hostroot" ] && setup_hostroot "$hostroot"; then' in text


def test_sshd_config_and_start() -> None:
    text = init_text()
    lines = bti.SSHD_CONFIG.splitlines()
    for needed in ("Port 22", "ListenAddress 0.0.0.0",
                   "HostKey /etc/vtorque/ssh_host_ed25519_key",
                   "AuthorizedKeysFile /etc/vtorque/authorized_keys/%u",
                   "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                   "PermitRootLogin no", "UsePAM no", "PidFile /run/sshd.pid",
                   "AcceptEnv PBS_* SLURM_* OMPI_* VTORQUE_*", "PermitUserEnvironment no",
                   "X11Forwarding no", "StrictModes yes"):
        assert needed in lines, needed
    # Written verbatim (quoted here-document: no expansion), then sshd chrooted into it.
    assert f"cat > $r/etc/vtorque/sshd_config <<'EOF'\n{bti.SSHD_CONFIG}EOF\n" in text
    assert "mkdir -p $r/run/sshd && chmod 0755 $r/run/sshd" in text
    start = "chroot $r /usr/sbin/sshd -f /etc/vtorque/sshd_config -E $log"
    assert text.index("cat > $r/etc/vtorque/sshd_config") < text.index(start)
    assert "grep -q ' 00000000:0016 00000000:0000 0A ' /proc/net/tcp" in text
    assert 'fail "sshd failed: ' in text
    # Only with the host root and a host key.
    assert ('if [ -f /run/seed/vtorque-ssh-host-key ]; then\n    if [ -n "$root" ]; then\n'
            '        start_sshd') in text


def test_ready_comes_last_and_only_without_errors() -> None:
    text = init_text()
    ready = text.index('echo "vtorque-ready $token" > /dev/console')
    for step in ("\nsetup_network\n", 'setup_hostroot "$hostroot"; then',
                 'install_seed_files /run/seed "$root"', "        start_sshd\n"):
        assert text.index(step) < ready, step
    assert 'if [ -n "$failed" ]; then\n    say "not ready' in text
    assert text.index('if [ -n "$failed" ]') < ready
    assert text.count("vtorque-ready") == 2  # the comment on vtorque.ready and the echo


def _write_seed(seed: Path, files: dict[str, str]) -> None:
    seed.mkdir()
    for name, content in files.items():
        (seed / name).write_text(content)


@needs_busybox
def test_install_seed_files_into_a_root(tmp_path: Path) -> None:
    root = tmp_path / "newroot"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost")  # no final newline
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    _write_seed(tmp_path / "seed", {
        "vtorque-hosts": "10.0.2.15 vt1-0\n10.0.2.16 vt1-1\n",
        "vtorque-ssh-host-key": key,
        "vtorque-ssh-host-key.pub": "ssh-ed25519 AAAAhost vt\n",
        "vtorque-authorized-keys": ("# users of job 12\n\n"
                                    "alice ssh-ed25519 AAAAa1 alice@login\n"
                                    "bob ssh-rsa AAAAb1\n"
                                    "alice ssh-ed25519 AAAAa2 second key, with spaces"),
        "vtorque-env": "VTORQUE_JOB=12\n",
        "vtorque-hostfile": "vt12-0 slots=2\n",
        "vtorque-nodefile": "vt12-0\nvt12-0\n",
    })
    stubs = "" if os.geteuid() == 0 else "chown() { :; }\n"  # only root can chown to root
    proc = run_functions(stubs + f'install_seed_files {tmp_path}/seed {root}\n'
                         'echo "failed=$failed"\n', tmp_path)
    assert proc.stdout == "failed=\n", proc.stdout + proc.stderr
    assert (root / "etc/hosts").read_text() == \
        "127.0.0.1 localhost\n10.0.2.15 vt1-0\n10.0.2.16 vt1-1\n"
    vt = root / "etc/vtorque"
    assert (vt / "authorized_keys/alice").read_text() == (
        "ssh-ed25519 AAAAa1 alice@login\nssh-ed25519 AAAAa2 second key, with spaces\n")
    assert (vt / "authorized_keys/bob").read_text() == "ssh-rsa AAAAb1\n"
    assert (vt / "ssh_host_ed25519_key").read_text() == key
    assert (vt / "ssh_host_ed25519_key.pub").read_text() == "ssh-ed25519 AAAAhost vt\n"
    assert (vt / "env").read_text() == "VTORQUE_JOB=12\n"
    assert (vt / "hostfile").read_text() == "vt12-0 slots=2\n"
    assert (vt / "nodefile").read_text() == "vt12-0\nvt12-0\n"
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in (
        vt, vt / "authorized_keys", vt / "authorized_keys/alice", vt / "ssh_host_ed25519_key",
        vt / "ssh_host_ed25519_key.pub", vt / "env", vt / "hostfile", vt / "nodefile")}
    assert modes == {vt: 0o755, vt / "authorized_keys": 0o755,
                     vt / "authorized_keys/alice": 0o644, vt / "ssh_host_ed25519_key": 0o600,
                     vt / "ssh_host_ed25519_key.pub": 0o644, vt / "env": 0o644,
                     vt / "hostfile": 0o644, vt / "nodefile": 0o644}
    if os.geteuid() == 0:
        assert all(path.stat().st_uid == 0 and path.stat().st_gid == 0 for path in modes)


@needs_busybox
def test_install_seed_files_refuses_bad_lines(tmp_path: Path) -> None:
    root = tmp_path / "newroot"
    (root / "etc").mkdir(parents=True)
    _write_seed(tmp_path / "seed", {"vtorque-authorized-keys": (
        "../evil ssh-ed25519 AAAAe x\n"
        "a/b ssh-ed25519 AAAAe x\n"
        "-o ssh-ed25519 AAAAe x\n"
        "nokey\n"
        "carol ssh-ed25519 AAAAc\n")})
    stubs = "" if os.geteuid() == 0 else "chown() { :; }\n"
    proc = run_functions(stubs + f'install_seed_files {tmp_path}/seed {root}\n'
                         'echo "failed=$failed"\n', tmp_path)
    assert proc.stdout.splitlines() == [
        "vtorque-error authorized keys failed: bad user name",
        "vtorque-error authorized keys failed: bad user name",
        "vtorque-error authorized keys failed: bad user name",
        "vtorque-error authorized keys failed: no key for nokey",
        "failed=1"]
    assert sorted(p.name for p in (root / "etc/vtorque/authorized_keys").iterdir()) == ["carol"]
    assert not (tmp_path / "evil").exists()


@needs_busybox
def test_install_seed_files_without_a_seed_does_nothing(tmp_path: Path) -> None:
    root = tmp_path / "newroot"
    (root / "etc").mkdir(parents=True)
    (tmp_path / "seed").mkdir()
    proc = run_functions(f'install_seed_files {tmp_path}/seed {root}\necho "failed=$failed"\n',
                         tmp_path)
    assert proc.stdout == "failed=\n"
    assert list((root / "etc").iterdir()) == []


@needs_busybox
def test_an_empty_public_key_file_is_not_installed(tmp_path: Path) -> None:
    # The host writes the .pub as its key plus a newline: just "\n" when it has none.
    root = tmp_path / "newroot"
    (root / "etc").mkdir(parents=True)
    _write_seed(tmp_path / "seed", {"vtorque-ssh-host-key": "k\n",
                                    "vtorque-ssh-host-key.pub": "\n"})
    stubs = "" if os.geteuid() == 0 else "chown() { :; }\n"
    proc = run_functions(stubs + f'install_seed_files {tmp_path}/seed {root}\n'
                         'echo "failed=$failed"\n', tmp_path)
    assert proc.stdout == "failed=\n"
    assert sorted(p.name for p in (root / "etc/vtorque").iterdir()) == ["ssh_host_ed25519_key"]


@needs_busybox
def test_must_reports_the_command_and_its_output(tmp_path: Path) -> None:
    proc = run_functions('must hostroot sh -c "echo first; echo second >&2; exit 3" || '
                         'echo "returned 1, failed=$failed"\n', tmp_path)
    assert proc.stdout.splitlines() == [
        "vtorque-error hostroot failed: sh -c echo first; echo second >&2; exit 3: "
        "first second ",
        "returned 1, failed=1"]


def test_recipe_changes_when_the_init_changes(tmp_path: Path) -> None:
    """A pool built by an older script is rebuilt: the recipe covers the /init's text."""
    vmlinuz, busybox = tmp_path / "vmlinuz", tmp_path / "busybox"
    vmlinuz.write_bytes(b"kernel")
    busybox.write_bytes(b"busybox")
    changed = tmp_path / "build-test-image"
    text = SCRIPT.read_text()
    assert "PermitRootLogin no\n" in text
    changed.write_text(text.replace("PermitRootLogin no\n", "PermitRootLogin yes\n", 1))
    loader = importlib.machinery.SourceFileLoader("build_test_image_changed", str(changed))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    other = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = other
    try:
        loader.exec_module(other)
    finally:
        del sys.modules[loader.name]
    assert other.init_script("v", []) != bti.init_script("v", [])
    assert other.recipe_hash("v", vmlinuz, busybox) != bti.recipe_hash("v", vmlinuz, busybox)
    assert bti.recipe_hash("v", vmlinuz, busybox) == bti.recipe_hash("v", vmlinuz, busybox)
    assert bti.RECIPE_VERSION >= 2


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
    assert "overlay.ko" in names  # for the host root's writable view
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


@needs_busybox
def test_job_environment_becomes_one_sshd_setenv_line(tmp_path: Path) -> None:
    (tmp_path / "env").write_text("PBS_NODEFILE=/etc/vtorque/nodefile\nOMPI_MCA_btl=^openib\n"
                                  "OMPI_MCA_mtl_ofi_provider_include=verbs;ofi_rxm\n")
    (tmp_path / "bad").write_text("X=$(reboot)\n")
    proc = run_functions('sshd_setenv env; echo "rc=$? failed=$failed"\n'
                         'sshd_setenv missing; echo "rc=$?"\n'
                         'sshd_setenv bad; echo "rc=$? failed=$failed"\n', tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == ("SetEnv PBS_NODEFILE=/etc/vtorque/nodefile OMPI_MCA_btl=^openib "
                        "OMPI_MCA_mtl_ofi_provider_include=verbs;ofi_rxm")
    assert lines[1:3] == ["rc=0 failed=", "rc=0"]
    assert lines[3:] == ["vtorque-error job environment failed: bad value for X",
                         "rc=1 failed=1"]


def test_mounts_agree_with_the_host_side() -> None:
    """The seed file's name and the 9p options are the host side's (vtorque/vm/mounts.py)."""
    from vtorque.vm import mounts
    assert bti.SEED_MOUNTS == mounts.TEST_GUEST_FILE
    assert bti.SHARE_MOUNT_OPTIONS == mounts.NINEP_OPTIONS


@needs_busybox
def test_setup_mounts_mounts_each_line_under_the_root(tmp_path: Path) -> None:
    """Each share at its node path under the root, outer first, read-only when asked,
    paths with spaces whole; an unknown line and a mount that fails are reported."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "mounts").write_text("9p vtshare0 rw /home/alice\n"
                                     "9p vtshare1 ro /scratch/a b\n\n"
                                     "bogus x y /z\n")
    stub = ('mount() { echo "mount $*" >> calls; [ "$5" != vtshare1 ] || '
            '{ echo "no such tag" >&2; return 32; }; }\n')
    proc = run_functions(stub + f'setup_mounts mounts {root}; echo "failed=$failed"\n',
                         tmp_path)
    calls = (tmp_path / "calls").read_text().splitlines()
    opts = bti.SHARE_MOUNT_OPTIONS
    assert calls == [f"mount -t 9p -o {opts} vtshare0 {root}/home/alice",
                     f"mount -t 9p -o {opts},ro vtshare1 {root}/scratch/a b"]
    assert (root / "home/alice").is_dir() and (root / "scratch/a b").is_dir()
    assert "vtorque-error mounts failed: mount -t 9p" in proc.stdout
    assert "no such tag" in proc.stdout
    assert "vtorque-error mounts failed: unknown line in mounts: bogus" in proc.stdout
    assert proc.stdout.rstrip().endswith("failed=1")


@needs_busybox
def test_setup_mounts_needs_the_hosts_root(tmp_path: Path) -> None:
    (tmp_path / "mounts").write_text("data vtorque-data - /data\n")
    proc = run_functions('setup_mounts mounts ""\n', tmp_path)
    assert "vtorque-error mounts failed: shares need the host's root" in proc.stdout
    assert run_functions('setup_mounts absent ""; echo "[$failed]"\n',
                         tmp_path).stdout == "[]\n"
