"""Fixtures shared by the unit tests. Everything lives under the test's own tmp_path, so the
tests are safe under `pytest -n auto`; nothing here touches global state."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from vtorque import config as config_mod
from vtorque.config import Config
from vtorque.images import Image, ImageFile
from vtorque.journal import JobPaths
from vtorque.request import parse_request
from vtorque.vm.spec import GuestSpec, build_guest_specs

QEMU_UID = 64055
QEMU_GID = 107
# Fixed strings (never touched on disk) so rendered XML is the same on every machine.
FIXED_POOL = "/var/lib/vtorque/images"
FIXED_STATE = "/var/lib/vtorque/jobs"
FIXED_RAMDISK = "/dev/shm/vtorque"


def fixed_token(index: int) -> str:
    return f"{0xFEEDC0DE00000000 + index:016x}"


def fixed_image(kind: str) -> Image:
    """An Image of each kind with fixed paths (nothing on disk)."""
    if kind == "linux":
        return Image(name="deb12", kind="linux", distro="debian", arch="x86_64",
                     descriptor=f"{FIXED_POOL}/deb12.yaml",
                     disk=ImageFile(f"{FIXED_POOL}/deb12.qcow2", "a" * 64, "qcow2"),
                     kernel=None, initrd=None, cmdline="")
    if kind == "kernel":
        return Image(name="testguest", kind="kernel", distro="debian", arch="x86_64",
                     descriptor=f"{FIXED_POOL}/testguest.yaml", disk=None,
                     kernel=ImageFile(f"{FIXED_POOL}/testguest.vmlinuz", "b" * 64),
                     initrd=ImageFile(f"{FIXED_POOL}/testguest.initrd", "c" * 64),
                     cmdline="console=ttyS0 quiet")
    if kind == "osv":
        return Image(name="osv-hello", kind="osv", distro="osv", arch="x86_64",
                     descriptor=f"{FIXED_POOL}/osv-hello.yaml",
                     disk=ImageFile(f"{FIXED_POOL}/osv-hello.raw", "d" * 64, "raw"),
                     kernel=None, initrd=None, cmdline="")
    raise ValueError(kind)


def merge(base: dict, extra: dict) -> dict:
    """Nested dict merge (extra wins), for building config files from overrides."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    """An empty image pool directory (root-owned, 0755) inside tmp_path."""
    path = tmp_path / "pool"
    path.mkdir()
    os.chmod(path, 0o755)
    return path


@pytest.fixture
def config_data(tmp_path: Path, pool_dir: Path) -> dict[str, Any]:
    """The minimal valid config for this test, as a dict: every path in tmp_path."""
    return {
        "image_pool": str(pool_dir),
        "state_dir": str(tmp_path / "state"),
        "ramdisk_dir": str(tmp_path / "shm"),
        "log_file": str(tmp_path / "log" / "vtorque.log"),
        "batch": {"shared_state_dir": str(tmp_path / "shared")},
    }


@pytest.fixture
def make_config(tmp_path: Path, config_data: dict[str, Any]) -> Callable[..., Config]:
    """make_config({'limits': {'vcpus': 4}}) -> a validated Config for this test."""
    def make(overrides: dict | None = None) -> Config:
        data = merge(config_data, overrides or {})
        return config_mod.parse(yaml.safe_dump(data), str(tmp_path / "vtorque.yaml"))
    return make


@pytest.fixture
def cfg(make_config: Callable[..., Config]) -> Config:
    """The default config (site defaults, paths in tmp_path)."""
    return make_config()


def _add_kernel_image(pool: Path, name: str = "testguest", distro: str = "debian",
                      extra: str = "") -> None:
    """A kernel-kind image with small fake kernel/initrd files and a correct descriptor
    (`extra`: more descriptor lines, e.g. "snapshot: true\\n")."""
    shas = {}
    for role in ("vmlinuz", "initrd"):
        data = f"fake {role} of {name}".encode()
        path = pool / f"{name}.{role}"
        path.write_bytes(data)
        os.chmod(path, 0o644)
        shas[role] = hashlib.sha256(data).hexdigest()
    descriptor = pool / f"{name}.yaml"
    descriptor.write_text(f"""\
name: {name}
kind: kernel
distro: {distro}
arch: x86_64
kernel: {{file: {name}.vmlinuz, sha256: '{shas["vmlinuz"]}'}}
initrd: {{file: {name}.initrd, sha256: '{shas["initrd"]}'}}
cmdline: "console=ttyS0"
{extra}""")
    os.chmod(descriptor, 0o644)


@pytest.fixture
def make_specs(make_config: Callable[..., Config]) -> Callable[..., list[GuestSpec]]:
    """make_specs('linux', 'vms_per_node=2', network={'mode': 'bridge'}) -> guest specs with
    fixed paths, tokens and ids (state_dir /var/lib/vtorque/jobs, never created);
    `job_cores` and `topology` (vm/numa.py) place them."""
    def make(kind: str, request: str = "vcpus=1", *, job_id: str = "12.server",
             first_rank: int = 0, domain_type: str = "kvm", image: Image | None = None,
             addresses: Any = None, rdma: str | None = None,
             functions: dict[int, str] | None = None, job_cores: Any = None,
             topology: Any = None, **overrides: Any) -> list[GuestSpec]:
        from vtorque.vm.numa import guest_placements
        cfg = make_config({"state_dir": FIXED_STATE, "ramdisk_dir": FIXED_RAMDISK,
                           **overrides})
        req = parse_request(request, cfg)
        placements = guest_placements(cfg, req, job_cores, topology)
        paths = JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir)
        return build_guest_specs(
            paths=paths, request=req, image=image or fixed_image(kind), config=cfg,
            domain_type=domain_type, first_rank=first_rank,
            tokens=[fixed_token(i) for i in range(req.vms_per_node)],
            qemu_uid=QEMU_UID, qemu_gid=QEMU_GID, addresses=addresses, rdma=rdma,
            functions=functions, placements=placements)
    return make


@pytest.fixture
def fixed() -> SimpleNamespace:
    """The fixed names the spec and render tests compare against (test modules must not
    import conftest: several conftest.py files share that module name)."""
    return SimpleNamespace(pool=FIXED_POOL, state=FIXED_STATE, ramdisk=FIXED_RAMDISK,
                           qemu_uid=QEMU_UID, qemu_gid=QEMU_GID, token=fixed_token,
                           image=fixed_image)


TEST_DRIVER_NODE = """\
<node>
  <cpu>
    <mhz>2000</mhz>
    <model>x86_64</model>
    <nodes>1</nodes>
    <sockets>1</sockets>
    <cores>8</cores>
    <threads>1</threads>
    <active>8</active>
    <max>8</max>
  </cpu>
  <memory>16777216</memory>
</node>
"""


@pytest.fixture
def test_uri(tmp_path: Path) -> str:
    """A libvirt test-driver URI with a private driver file (no domains) for this test.
    Each connection to it starts from this file: state is not shared between connections."""
    path = tmp_path / "node.xml"
    path.write_text(TEST_DRIVER_NODE)
    return f"test://{path}"


@pytest.fixture
def add_kernel_image() -> Callable[..., None]:
    """add_kernel_image(pool_dir, name='testguest', distro='debian', extra='')."""
    return _add_kernel_image


@pytest.fixture
def no_libvirt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to reach libvirt or start guests fails the test."""
    import libvirt

    from vtorque.prologue import guests
    from vtorque.vm import lifecycle

    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("libvirt touched")
    for name in ("open", "openReadOnly", "openAuth"):
        monkeypatch.setattr(libvirt, name, boom)
    monkeypatch.setattr(guests, "bring_up", boom)
    monkeypatch.setattr(lifecycle, "up", boom)
    monkeypatch.setattr(lifecycle, "down", boom)
