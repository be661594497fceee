"""Checkers of config values: each takes the raw YAML value and returns the typed value or
raises ValueError saying what was expected."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from vtorque.units import HUGEPAGE_SIZES_MIB, parse_bool, parse_hugepages, parse_size_mib

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAC_PREFIX = re.compile(r"[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}")


def integer(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer from {lo} to {hi}")
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {value}")
        return value
    return check


def seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise ValueError("expected a number of seconds above 0 and at most 86400")
    return float(value)


def size(lo_mib: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError("expected a size such as 512M or 4G")
        mib = parse_size_mib(str(value))
        if mib < lo_mib:
            raise ValueError(f"expected at least {lo_mib}M, got {value}")
        return mib
    return check


def hugepages(value: Any) -> int:
    """no/false, yes/true (2 MiB pages), 2M or 1G -> page size in MiB (0 = off)."""
    if isinstance(value, bool):
        return HUGEPAGE_SIZES_MIB[0] if value else 0
    if not isinstance(value, str):
        raise ValueError("expected no, yes, 2M or 1G")
    return parse_hugepages(value)


def choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value
    return check


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(value)
    raise ValueError("expected true or false")


def name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError("expected a name of letters, digits, '.', '_' or '-'")
    return value


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(value: Any) -> Any:
        return None if value is None else check(value)
    return inner


def abs_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError("expected an absolute path")
    return os.path.normpath(value)


def existing_dir(value: Any) -> str:
    path = abs_path(value)
    if not os.path.isdir(path):
        raise ValueError(f"directory {path} does not exist")
    return path


def uri(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ValueError("expected a libvirt URI such as qemu:///system")
    return value


def mac_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _MAC_PREFIX.fullmatch(value.lower()):
        raise ValueError("expected three hex octets such as 52:54:00")
    if int(value[:2], 16) & 1:
        raise ValueError("expected a unicast prefix (first octet even)")
    return value.lower()


def subnet(value: Any) -> str:
    import ipaddress  # only here: the hooks load the config for every job
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError:
        raise ValueError("expected an IPv4 network such as 192.168.122.0/24") from None
    if net.prefixlen > 30:
        raise ValueError("expected a network of at least 4 addresses (prefix /30 or shorter)")
    return str(net)


def ipv4(value: Any) -> str:
    import ipaddress  # only here: the hooks load the config for every job
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ValueError("expected an IPv4 address") from None


def secret_path(value: Any) -> str:
    return abs_path(value)


def names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of names")
    return tuple(name(item) for item in value)


def guid_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}", value.lower()):
        raise ValueError("expected two hex octets such as 02:76")
    return value.lower()


def pkey(value: Any) -> int:
    # YAML reads 0x8001 as an integer already; a quoted "0x8001" is accepted too.
    if isinstance(value, str):
        try:
            if not value.isascii():
                raise ValueError("not ASCII")
            value = int(value, 0)
        except ValueError:
            raise ValueError("expected a partition key from 0x0001 to 0x7ffe, or 0") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0x7ffe:
        raise ValueError("expected a partition key from 0x0001 to 0x7ffe, or 0")
    return value
