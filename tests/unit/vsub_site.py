"""A test site for vsub (shared by the Torque/PBS and the Slurm vsub tests): a catalog
with one tiny image, a config file, and vsub run in-process with a given stdin."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from vtorque.submit import vsub


def add_image(pool: Path, name: str = "testguest", distro: str = "debian") -> None:
    """A tiny kernel-kind catalog image: descriptor plus one fake kernel file."""
    kernel = pool / f"{name}.vmlinuz"
    kernel.write_bytes(f"kernel of {name}".encode())
    sha = hashlib.sha256(kernel.read_bytes()).hexdigest()
    (pool / f"{name}.yaml").write_text(
        f"name: {name}\nkind: kernel\ndistro: {distro}\narch: x86_64\n"
        f"kernel: {{file: {name}.vmlinuz, sha256: '{sha}'}}\n")


class VsubSite(SimpleNamespace):
    """Attributes: tmp, pool, bin, config, monkeypatch, capsys (and the subclass's own)."""

    def batch_config(self) -> dict[str, Any]:
        return {"bin_dir": str(self.bin)}

    def write_config(self, **overrides: Any) -> None:
        data = {"image_pool": str(self.pool), "state_dir": str(self.tmp / "state"),
                "ramdisk_dir": str(self.tmp / "shm"), "batch": self.batch_config()}
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        self.config.write_text(yaml.safe_dump(data))

    def script(self, text: str, name: str = "job.sh") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def run(self, *argv: str, stdin: str = "") -> SimpleNamespace:
        """vsub in this process (stand-in batch commands still run as subprocesses)."""
        self.monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
        self.capsys.readouterr()
        code = vsub.main(list(argv))
        out, err = self.capsys.readouterr()
        return SimpleNamespace(code=code, out=out, err=err)
