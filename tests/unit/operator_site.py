"""Helpers of the operator-command tests (status, ssh, console, doctor, image, metrics):
a config written to a file, as the `vtorque` command reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.unit.conftest import merge
from vtorque import config as config_mod


def write_config(path: Path, data: dict[str, Any], overrides: dict | None = None):
    """Write `data` merged with `overrides` to `path`; the loaded Config."""
    path.write_text(yaml.safe_dump(merge(data, overrides or {})))
    return config_mod.load(str(path))
