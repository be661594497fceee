"""The shape of an image descriptor (`<name>.yaml`): known keys, types, kind rules."""

from __future__ import annotations

import re
from typing import Any

from vtorque.errors import ImageError
from vtorque.images.model import DISK_FORMATS, is_valid_name, refuse

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_CMDLINE = re.compile(r"[\x20-\x7e]*")
_CMDLINE_MAX = 1024
_FILE_KEYS = ("file", "sha256")
_DISK_KEYS = ("file", "format", "sha256")
TOP_KEYS = ("name", "kind", "distro", "arch", "kernel", "initrd", "cmdline", "disk",
            "host_share", "snapshot")


class Shape:
    """Checks the raw YAML mapping of one descriptor; errors name the file and the key."""

    def __init__(self, name: str, descriptor: str, data: dict[str, Any]):
        self.name = name
        self.descriptor = descriptor
        self.data = data

    def error(self, reason: str) -> ImageError:
        return refuse(self.name, f"descriptor {self.descriptor}: {reason}")

    def check_keys(self, data: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in data:
            if key not in allowed:
                raise self.error(f"unknown key {prefix + str(key)!r}")

    def string(self, key: str, required: bool = True) -> str | None:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(f"missing key {key!r}")
            return None
        if not isinstance(value, str):
            raise self.error(f"key {key!r} must be a string")
        return value

    def word(self, key: str) -> str:
        value = self.string(key)
        assert value is not None
        if not is_valid_name(value):
            raise self.error(f"key {key!r} must be a name "
                             "(letters, digits, '.', '_', '-'; at most 64 characters)")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.string(key)
        if value not in choices:
            raise self.error(f"key {key!r} must be one of {', '.join(choices)}, got {value!r}")
        assert value is not None
        return value

    def flag(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self.error(f"key {key!r} must be true or false")
        return value

    def file_entry(self, key: str, is_disk: bool) -> tuple[str, str, str | None] | None:
        """(relative file, sha256, format) of a file key, or None when absent."""
        entry = self.data.get(key)
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise self.error(f"key {key!r} must be a mapping with keys "
                             f"{', '.join(_DISK_KEYS if is_disk else _FILE_KEYS)}")
        self.check_keys(entry, _DISK_KEYS if is_disk else _FILE_KEYS, key + ".")
        for sub in _DISK_KEYS if is_disk else _FILE_KEYS:
            if entry.get(sub) is None:
                raise self.error(f"missing key {key + '.' + sub!r}")
            if not isinstance(entry[sub], str):
                hint = " (quote it if it is all digits)" if sub == "sha256" else ""
                raise self.error(f"key {key + '.' + sub!r} must be a string{hint}")
        if not _SHA256.fullmatch(entry["sha256"]):
            raise self.error(f"key {key + '.sha256'!r} must be 64 hexadecimal digits")
        fmt = entry.get("format")
        if is_disk and fmt not in DISK_FORMATS:
            raise self.error(f"key {key + '.format'!r} must be one of "
                             f"{', '.join(DISK_FORMATS)}, got {fmt!r}")
        return entry["file"], entry["sha256"].lower(), fmt

    def cmdline(self) -> str:
        value = self.string("cmdline", required=False) or ""
        if len(value) > _CMDLINE_MAX:
            raise self.error(f"key 'cmdline' is longer than {_CMDLINE_MAX} characters")
        if not _CMDLINE.fullmatch(value) or '"' in value or "'" in value:
            raise self.error("key 'cmdline' must be printable ASCII without quotes")
        return value

    def check_kind_rules(self, kind: str) -> None:
        """kernel: a kernel (initrd, cmdline, disk optional). linux: a disk that boots
        itself. osv: a disk (its root file system), optionally booted directly with the
        same build's kernel and the loader's command line, both given (vtorque adds each
        guest's address to that command line)."""
        present = {k for k in ("kernel", "initrd", "cmdline", "disk") if k in self.data}
        if kind == "kernel":
            if "kernel" not in present:
                raise self.error("missing key 'kernel' (required for kind 'kernel')")
            return
        allowed = ("kernel", "cmdline") if kind == "osv" else ()
        for key in ("kernel", "initrd", "cmdline"):
            if key in present and key not in allowed:
                raise self.error(f"key {key!r} is not allowed for kind {kind!r}")
        if "disk" not in present:
            raise self.error(f"missing key 'disk' (required for kind {kind!r})")
        if kind == "osv" and ("kernel" in present) != ("cmdline" in present):
            raise self.error("keys 'kernel' and 'cmdline' go together for kind 'osv' "
                             "(direct kernel boot: the loader's options and the command)")
