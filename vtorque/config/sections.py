"""The typed sections of the config: one frozen dataclass per section of the schema. A
unit test checks that their fields are exactly the schema's keys."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostReserve:
    cores: int
    memory: int                       # MiB


@dataclass(frozen=True)
class Defaults:
    img: str | None
    distro: str | None
    arch: str
    vcpus: int
    ram: int                          # MiB
    vms_per_node: int
    vcpu_pinning: bool
    disk: int                         # MiB
    vrdma: bool
    fs_type: str
    hugepages: int                    # page size in MiB, 0 = ordinary memory


@dataclass(frozen=True)
class Limits:
    vcpus: int
    ram: int                          # MiB
    min_ram: int                      # MiB
    vms_per_node: int
    disk: int                         # MiB


@dataclass(frozen=True)
class Timeouts:
    provision: float                  # seconds
    guest_ready: float
    teardown: float


@dataclass(frozen=True)
class Snapshots:
    enabled: bool
    template_timeout: float           # seconds
    retry_after: float                # seconds
    keep: int


@dataclass(frozen=True)
class Batch:
    system: str
    bin_dir: str
    shared_state_dir: str
    job_shell: str
    max_requeues: int
    shares: tuple[tuple[str, bool], ...]    # (path, read-only)


@dataclass(frozen=True)
class Network:
    mode: str
    name: str
    bridge: str
    mac_prefix: str
    subnet: str
    gateway: str | None
    pool_first: int
    pool_last: int
    mtu: int
    isolate_jobs: bool


@dataclass(frozen=True)
class Numa:
    bind: bool
    sysfs_root: str


@dataclass(frozen=True)
class Ibverbs:
    sriov: bool
    soft_roce: bool
    devices: tuple[str, ...]
    transport: str
    guid_prefix: str
    pkey_first: int
    pkey_last: int
    partitions_dir: str | None
    sysfs_root: str


SECTIONS = {"host_reserve": HostReserve, "defaults": Defaults, "limits": Limits,
            "timeouts": Timeouts, "snapshots": Snapshots, "batch": Batch, "network": Network,
            "numa": Numa, "ibverbs": Ibverbs}
