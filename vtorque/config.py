"""The site configuration: one YAML file, validated as it loads.

Every key, its type, its default and its meaning are declared once, in SCHEMA below;
conf/vtorque.yaml documents the same keys for admins (a unit test keeps the two in step).
Loading collects every problem (unknown key, wrong type, out of range, missing file) and
raises one ConfigError naming the file and each key; nothing half-valid is ever returned.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from vtorque.errors import ConfigError
from vtorque.units import parse_bool, parse_size_mib

if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/etc/vtorque/vtorque.yaml"
ENV_VAR = "VTORQUE_CONFIG"

HYPERVISORS = ("auto", "kvm", "qemu")
NETWORK_MODES = ("none", "network", "bridge")
FS_TYPES = ("sharedfs", "ramdisk")
ARCHES = ("x86_64",)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAC_PREFIX = re.compile(r"[0-9a-f]{2}:[0-9a-f]{2}:[0-9a-f]{2}")


# --- field checkers: each takes the raw YAML value, returns the typed value or raises
# ValueError with what was expected. -------------------------------------------------

def _int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer from {lo} to {hi}")
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}, got {value}")
        return value
    return check


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400:
        raise ValueError("expected a number of seconds above 0 and at most 86400")
    return float(value)


def _size(lo_mib: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValueError("expected a size such as 512M or 4G")
        mib = parse_size_mib(str(value))
        if mib < lo_mib:
            raise ValueError(f"expected at least {lo_mib}M, got {value}")
        return mib
    return check


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value
    return check


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return parse_bool(value)
    raise ValueError("expected true or false")


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError("expected a name of letters, digits, '.', '_' or '-'")
    return value


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def inner(value: Any) -> Any:
        return None if value is None else check(value)
    return inner


def _abs_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError("expected an absolute path")
    return os.path.normpath(value)


def _existing_dir(value: Any) -> str:
    path = _abs_path(value)
    if not os.path.isdir(path):
        raise ValueError(f"directory {path} does not exist")
    return path


def _uri(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ValueError("expected a libvirt URI such as qemu:///system")
    return value


def _mac_prefix(value: Any) -> str:
    if not isinstance(value, str) or not _MAC_PREFIX.fullmatch(value.lower()):
        raise ValueError("expected three hex octets such as 52:54:00")
    if int(value[:2], 16) & 1:
        raise ValueError("expected a unicast prefix (first octet even)")
    return value.lower()


def _subnet(value: Any) -> str:
    import ipaddress  # only here: the hooks load the config for every job
    try:
        net = ipaddress.IPv4Network(str(value), strict=True)
    except ValueError:
        raise ValueError("expected an IPv4 network such as 192.168.122.0/24") from None
    if net.prefixlen > 30:
        raise ValueError("expected a network of at least 4 addresses (prefix /30 or shorter)")
    return str(net)


def _ipv4(value: Any) -> str:
    import ipaddress  # only here: the hooks load the config for every job
    try:
        return str(ipaddress.IPv4Address(str(value)))
    except ValueError:
        raise ValueError("expected an IPv4 address") from None


def _secret_path(value: Any) -> str:
    return _abs_path(value)


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of names")
    return tuple(_name(item) for item in value)


def _guid_prefix(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}", value.lower()):
        raise ValueError("expected two hex octets such as 02:76")
    return value.lower()


def _pkey(value: Any) -> int:
    # YAML reads 0x8001 as an integer already; a quoted "0x8001" is accepted too.
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise ValueError("expected a partition key from 0x0001 to 0x7ffe, or 0") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0x7ffe:
        raise ValueError("expected a partition key from 0x0001 to 0x7ffe, or 0")
    return value


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], Any]
    default: Any
    doc: str


# Every key of the file: section -> key -> Field. Defaults are raw YAML values and go
# through the same checks as the admin's values.
SCHEMA: dict[str, dict[str, Field] | Field] = {
    "image_pool": Field(_existing_dir, "/var/lib/vtorque/images",
                        "directory of authorized images: one <name>.yaml descriptor each"),
    "state_dir": Field(_abs_path, "/var/lib/vtorque/jobs",
                       "per-job state on this node (overlays, seeds, journal)"),
    "ramdisk_dir": Field(_abs_path, "/dev/shm/vtorque",
                         "where overlays live for fs_type=ramdisk"),
    "min_free_space": Field(_size(0), "1G",
                            "refuse to start guests when the file system holding their "
                            "disks has less free space than this"),
    "log_file": Field(_abs_path, "/var/log/vtorque/vtorque.log",
                      "the node's log: every hook's decisions and failures, one line each"),
    "secret_file": Field(_secret_path, "/etc/vtorque/secret",
                         "root-only file of 32+ random bytes, identical on every node; "
                         "per-job SSH keys are derived from it"),
    "node_name": Field(_optional(_name), None,
                       "this node's name as the batch system knows it (null: the hostname)"),
    "hypervisor": Field(_choice(HYPERVISORS), "auto",
                        "kvm, qemu (TCG software emulation) or auto (kvm when usable)"),
    "libvirt_uri": Field(_uri, "qemu:///system", "libvirt connection URI"),
    "qemu_user": Field(_name, "libvirt-qemu", "user QEMU runs as (owner of guest disks)"),
    "qemu_group": Field(_name, "kvm", "group QEMU runs as (may traverse job directories)"),
    "machine_type": Field(_choice(("q35", "pc")), "q35", "QEMU machine type of the guests"),
    "host_reserve": {
        "cores": Field(_int(0, 1024), 1, "cores kept for the host, never given to guests"),
        "memory": Field(_size(0), "1G", "memory kept for the host"),
    },
    "defaults": {
        "img": Field(_optional(_name), None, "image used when the request names none"),
        "distro": Field(_optional(_name), None, "distro used to pick an image by distro"),
        "arch": Field(_choice(ARCHES), "x86_64", "guest architecture"),
        "vcpus": Field(_int(1, 4096), 1, "virtual CPUs per guest"),
        "ram": Field(_size(16), "1G", "memory per guest"),
        "vms_per_node": Field(_int(1, 256), 1, "guests per allocated node"),
        "vcpu_pinning": Field(_bool, False, "pin each vCPU to one host core"),
        "disk": Field(_size(0), "0", "scratch disk for guest rank 0 (0 = none)"),
        "vrdma": Field(_bool, False, "RDMA device in every guest"),
        "fs_type": Field(_choice(FS_TYPES), "sharedfs",
                         "where guest overlays live: sharedfs (state_dir) or ramdisk"),
    },
    "limits": {
        "vcpus": Field(_int(1, 4096), 64, "most vCPUs per guest"),
        "ram": Field(_size(16), "256G", "most memory per guest"),
        "min_ram": Field(_size(16), "64M", "least memory per guest"),
        "vms_per_node": Field(_int(1, 256), 8, "most guests per node"),
        "disk": Field(_size(0), "100G", "largest scratch disk"),
    },
    "timeouts": {
        "provision": Field(_seconds, 240, "whole node-local start of a job's guests; keep it "
                           "below Torque's $prologalarm (300 s by default)"),
        "guest_ready": Field(_seconds, 180, "one guest, from start to its ready signal"),
        "teardown": Field(_seconds, 60, "destroying a job's guests and files"),
    },
    "batch": {
        "system": Field(_choice(("auto", "torque", "openpbs", "slurm")), "auto",
                        "batch system: torque, openpbs, slurm, or auto (by the commands "
                        "found in bin_dir)"),
        "bin_dir": Field(_abs_path, "/usr/bin", "directory of qsub, qstat, pbsnodes, sbatch, "
                         "scontrol; hooks never search PATH"),
        "shared_state_dir": Field(_abs_path, "/var/spool/vtorque/shared",
                                  "directory on a file system shared by all nodes; the mother "
                                  "superior reads each node's guest status here"),
        "job_shell": Field(_abs_path, "/usr/local/libexec/vtorque/job-shell",
                           "the shell vsub gives VM jobs (qsub -S): runs the script in guest "
                           "rank 0; installed by contrib/torque_hooks/install"),
        "max_requeues": Field(_int(0, 100), 3, "node faults that requeue a job before the "
                              "prologue aborts it instead"),
    },
    "network": {
        "mode": Field(_choice(NETWORK_MODES), "none",
                      "none (no NIC), network (a libvirt network), bridge (a host bridge)"),
        "name": Field(_name, "default", "libvirt network for mode=network"),
        "bridge": Field(_name, "br0", "host bridge for mode=bridge"),
        "mac_prefix": Field(_mac_prefix, "52:54:00", "first three octets of guest MACs"),
        "subnet": Field(_subnet, "192.168.122.0/24", "guest subnet (IPv4 CIDR)"),
        "gateway": Field(_optional(_ipv4), "192.168.122.1",
                         "guests' default gateway and the host side of their network"),
        "pool_first": Field(_int(1, 16777214), 16,
                            "first host number in the subnet handed to guests"),
        "pool_last": Field(_int(1, 16777214), 254,
                           "last host number in the subnet handed to guests"),
        "mtu": Field(_int(576, 65520), 1500, "guest NIC MTU"),
        "isolate_jobs": Field(_bool, True, "libvirt nwfilter per NIC: a guest talks IPv4 "
                              "only with its own job's guests and the gateway"),
    },
    "ibverbs": {
        "sriov": Field(_bool, True, "give vrdma guests SR-IOV virtual functions of this "
                       "node's InfiniBand/RoCE adapters (VFIO passthrough)"),
        "soft_roce": Field(_bool, False, "where no adapter with free SR-IOV functions exists, "
                           "give vrdma guests Soft-RoCE (rdma_rxe on their virtio NIC): the "
                           "same verbs API, far slower; false refuses such jobs"),
        "devices": Field(_names, [], "adapters (e.g. mlx5_0) whose functions guests may get; "
                         "empty: every adapter with SR-IOV enabled"),
        "transport": Field(_choice(("ucx", "verbs")), "ucx",
                           "how Open MPI in the guests uses RDMA: ucx (pml ucx) or verbs "
                           "(btl openib)"),
        "guid_prefix": Field(_guid_prefix, "02:76", "first two octets of the node and port "
                             "GUIDs set on a job's functions (locally administered)"),
        "pkey_first": Field(_pkey, 0, "first partition key handed to jobs, one per job "
                            "(0: no per-job partition keys)"),
        "pkey_last": Field(_pkey, 0, "last partition key handed to jobs"),
        "partitions_dir": Field(_optional(_abs_path), None,
                                "where the mother superior writes each job's OpenSM partition "
                                "(<job>.conf: its key and its port GUIDs) for the subnet "
                                "manager's host to merge; null: not written"),
        "sysfs_root": Field(_abs_path, "/", "root under which sys/class/infiniband and "
                            "sys/bus/pci are read (tests point it at a fake tree)"),
    },
}


@dataclass(frozen=True)
class Section:
    """A validated section: attribute access to its keys."""
    values: Mapping[str, Any]

    def __getattr__(self, key: str) -> Any:
        try:
            return self.values[key]
        except KeyError:
            raise AttributeError(key) from None


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
    host_reserve: Section
    defaults: Section
    limits: Section
    timeouts: Section
    batch: Section
    network: Section
    ibverbs: Section


def resolve_path(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """--config wins, then $VTORQUE_CONFIG, then the default path."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    return env.get(ENV_VAR) or DEFAULT_PATH


def load(path: str | None = None) -> Config:
    """Read and validate the config file; raise ConfigError listing every problem."""
    path = resolve_path(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(path, ["file not found"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(path, ["not UTF-8 text"]) from None
    return parse(text, path)


def parse(text: str, path: str = "<string>") -> Config:
    """Validate YAML text as a config; `path` only names the source in messages."""
    try:
        # libyaml's C loader when present: the hooks read this file on every job.
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(path, [f"not valid YAML{where}"]) from None
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
    sections = {k: Section(v) if isinstance(v, dict) else v for k, v in values.items()}
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
