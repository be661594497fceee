"""The site configuration: one YAML file, validated as it loads.

Every key, its type, its default and its meaning are declared once (schema.py);
conf/vtorque.yaml documents the same keys for admins (a unit test keeps the two in step).
Loading collects every problem (unknown key, wrong type, out of range, missing file) and
raises one ConfigError naming the file and each key; nothing half-valid is ever returned.
The result is typed: one frozen dataclass per section (sections.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vtorque.config.schema import ARCHES, FS_TYPES, HYPERVISORS, NETWORK_MODES, SCHEMA, Field
from vtorque.config.sections import (
    SECTIONS,
    Batch,
    Defaults,
    HostReserve,
    Ibverbs,
    Limits,
    Network,
    Numa,
    Snapshots,
    Timeouts,
)
from vtorque.errors import ConfigError, NodeError

__all__ = ["ARCHES", "FS_TYPES", "HYPERVISORS", "NETWORK_MODES", "SCHEMA", "Config",
           "Field", "from_raw", "iter_fields", "load", "parse", "resolve_path"]

DEFAULT_PATH = "/etc/vtorque/vtorque.yaml"
ENV_VAR = "VTORQUE_CONFIG"
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Config:
    path: str
    image_pool: str
    state_dir: str
    ramdisk_dir: str
    min_free_space: int
    log_file: str
    secret_file: str
    node_name: str | None
    hypervisor: str
    libvirt_uri: str
    qemu_user: str
    qemu_group: str
    machine_type: str
    host_reserve: HostReserve
    defaults: Defaults
    limits: Limits
    timeouts: Timeouts
    snapshots: Snapshots
    batch: Batch
    network: Network
    ibverbs: Ibverbs
    numa: Numa

    def with_node_name(self, name: str) -> Config:
        """This config for the node the batch system calls `name` (several node daemons
        may share a host and a config file)."""
        return dataclasses.replace(self, node_name=name)


def resolve_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """--config wins, then $VTORQUE_CONFIG, then the default path."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    return env.get(ENV_VAR) or DEFAULT_PATH


def load(path: str | None = None, *, trusted: bool | None = None) -> Config:
    """Read and validate the config file; raise ConfigError listing every problem.

    `trusted` (default: when running as root) reads the file only if nobody but root can
    have written it: the file and every directory above it (files.read_trusted). The
    config names the commands root runs and the directories root writes, so a config a
    user can change would hand root to that user. A trusted load reads the file that way
    every time, and parses its YAML only when the cache beside it (config/cache.py) was
    not made from exactly these bytes; the values are validated either way."""
    path = resolve_path(path)
    if trusted is None:
        trusted = os.geteuid() == 0
    try:
        if trusted:
            from vtorque.files import read_trusted
            data = read_trusted(path, "", limit=MAX_BYTES)
        else:
            with open(path, "rb") as handle:
                data = handle.read()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except NodeError as exc:
        raise ConfigError(path, [f"not trusted: {exc}"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["not UTF-8 text"]) from None
    if not trusted:
        return parse(text, path)
    from vtorque.config import cache
    raw = cache.lookup(path, text)
    if raw is cache.MISS:
        raw = _yaml(text, path)
        config = from_raw(raw, path)          # only a valid file's values are kept
        cache.store(path, text, raw)
        return config
    return from_raw(raw, path)


def parse(text: str, path: str = "<string>") -> Config:
    """Validate YAML text as a config; `path` only names the source in messages."""
    return from_raw(_yaml(text, path), path)


def _yaml(text: str, path: str) -> Any:
    import yaml     # here: a load the cache answers never imports PyYAML
    try:
        # libyaml's C loader when present: the hooks read this file on every job.
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(path, [f"not valid YAML{where}"]) from None


def from_raw(raw: Any, path: str = "<string>") -> Config:
    """Validate what the YAML parser made of a config file (`path` names it)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, ["expected a mapping of keys at the top level"])
    problems: list[str] = []
    values = _validate(raw, SCHEMA, "", problems)
    if problems:
        raise ConfigError(path, problems)
    if values["limits"]["min_ram"] > values["limits"]["ram"]:
        problems.append("limits.min_ram: must not exceed limits.ram")
    for key in ("vcpus", "ram", "vms_per_node", "disk"):
        if values["defaults"][key] > values["limits"][key]:
            problems.append(f"defaults.{key}: exceeds limits.{key}")
    if values["defaults"]["ram"] < values["limits"]["min_ram"]:
        problems.append("defaults.ram: is below limits.min_ram")
    page = values["defaults"]["hugepages"]
    if page and values["defaults"]["ram"] % page:
        problems.append(f"defaults.ram: not a whole number of defaults.hugepages pages "
                        f"({page}M)")
    import ipaddress
    net = values["network"]
    if net["pool_first"] > net["pool_last"]:
        problems.append("network.pool_first: must not exceed network.pool_last")
    subnet = ipaddress.IPv4Network(net["subnet"])
    if net["pool_last"] >= subnet.num_addresses - 1:
        problems.append(f"network.pool_last: beyond the last host of {subnet}")
    if net["gateway"] and ipaddress.IPv4Address(net["gateway"]) not in subnet:
        problems.append(f"network.gateway: not inside network.subnet {subnet}")
    ib = values["ibverbs"]
    if bool(ib["pkey_first"]) != bool(ib["pkey_last"]) or ib["pkey_first"] > ib["pkey_last"]:
        problems.append("ibverbs.pkey_first: must be at most ibverbs.pkey_last, both set or "
                        "both 0")
    if values["defaults"]["vrdma"] and not ib["sriov"] and not ib["soft_roce"]:
        problems.append("defaults.vrdma: true, but ibverbs.sriov and ibverbs.soft_roce are "
                        "both off: every job would be refused")
    if ib["soft_roce"] and net["mode"] == "none":
        problems.append("ibverbs.soft_roce: Soft-RoCE runs over the guests' NIC; set "
                        "network.mode")
    if problems:
        raise ConfigError(path, problems)
    sections = {k: SECTIONS[k](**v) if k in SECTIONS else v for k, v in values.items()}
    return Config(path=path, **sections)


def _validate(raw: dict, schema: dict, prefix: str, problems: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in raw:
        if key not in schema:
            problems.append(f"{prefix}{key}: unknown key")
    for key, spec in schema.items():
        name = f"{prefix}{key}"
        if isinstance(spec, dict):
            sub = raw.get(key, {})
            if sub is None:
                sub = {}
            if not isinstance(sub, dict):
                problems.append(f"{name}: expected a mapping")
                sub = {}
            out[key] = _validate(sub, spec, name + ".", problems)
            continue
        value = raw.get(key, spec.default)
        try:
            out[key] = spec.check(value)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return out


def iter_fields(schema: dict | None = None, prefix: str = ""):
    """Yield (dotted key, Field) for every key, for docs and tests."""
    for key, spec in (SCHEMA if schema is None else schema).items():
        if isinstance(spec, dict):
            yield from iter_fields(spec, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", spec
