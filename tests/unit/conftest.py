"""Fixtures shared by the unit tests. Everything lives under the test's own tmp_path, so the
tests are safe under `pytest -n auto`; nothing here touches global state."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtorque import config as config_mod
from vtorque.config import Config

QEMU_UID = 64055
QEMU_GID = 107


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


def add_kernel_image(pool: Path, name: str = "testguest", distro: str = "debian") -> None:
    """A kernel-kind image with small fake kernel/initrd files and a correct descriptor."""
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
""")
    os.chmod(descriptor, 0o644)
