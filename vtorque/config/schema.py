"""Every key of the config file, once: its checker, its default and what it means.
conf/vtorque.yaml documents the same keys for admins (a unit test keeps the two in step).
Defaults are raw YAML values and go through the same checks as the admin's values."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vtorque.config import checks as c

HYPERVISORS = ("auto", "kvm", "qemu")
NETWORK_MODES = ("none", "network", "bridge")
FS_TYPES = ("sharedfs", "ramdisk")
ARCHES = ("x86_64",)

# Share paths (the job's working directory, the owner's home, batch.shares) are mounted at
# the same path in the guests: never at or below the guest's own system directories.
SHARE_SYSTEM_PATHS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64",
                      "/libx32", "/proc", "/root", "/run", "/sbin", "/sys", "/usr",
                      "/var/cache", "/var/lib", "/var/lock", "/var/log", "/var/run",
                      "/var/spool", "/data")
SHARE_SYSTEM_EXACT = ("/", "/tmp", "/var", "/var/tmp")
SHARE_PATH_MAX = 1024


def share_path_problem(path: Any) -> str | None:
    """Why `path` cannot be mounted at the same path in a guest, or None."""
    if not isinstance(path, str) or not path.startswith("/"):
        return "not an absolute path"
    if len(path) > SHARE_PATH_MAX:
        return f"longer than {SHARE_PATH_MAX} characters"
    if any(not " " <= ch <= "~" for ch in path):
        return "characters other than printable ASCII"
    if os.path.normpath(path) != path or path.startswith("//"):
        return "not a normalized path"
    if path in SHARE_SYSTEM_EXACT or any(path == p or path.startswith(p + "/")
                                         for p in SHARE_SYSTEM_PATHS):
        return "a system directory in the guest"
    return None


def shares(value: Any) -> tuple[tuple[str, bool], ...]:
    """A list of PATH or PATH:ro entries -> ((path, readonly), ...), each path once."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError("expected a list of absolute paths (PATH or PATH:ro)")
    out: list[tuple[str, bool]] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a path, got {item!r}")
        path, readonly = (item[:-3], True) if item.endswith(":ro") else (item, False)
        problem = share_path_problem(path)
        if problem:
            raise ValueError(f"{item[:100]!r}: {problem}")
        if any(p == path for p, _ in out):
            raise ValueError(f"{path!r} is listed twice")
        out.append((path, readonly))
    return tuple(out)


@dataclass(frozen=True)
class Field:
    check: Callable[[Any], Any]
    default: Any
    doc: str


# Every key of the file: section -> key -> Field.
SCHEMA: dict[str, dict[str, Field] | Field] = {
    "image_pool": Field(c.existing_dir, "/var/lib/vtorque/images",
                        "directory of authorized images: one <name>.yaml descriptor each"),
    "state_dir": Field(c.abs_path, "/var/lib/vtorque/jobs",
                       "per-job state on this node (overlays, seeds, journal)"),
    "ramdisk_dir": Field(c.abs_path, "/dev/shm/vtorque",
                         "where overlays live for fs_type=ramdisk"),
    "min_free_space": Field(c.size(0), "1G",
                            "refuse to start guests when the file system holding their "
                            "disks has less free space than this"),
    "log_file": Field(c.abs_path, "/var/log/vtorque/vtorque.log",
                      "the node's log: every hook's decisions and failures, one line each"),
    "secret_file": Field(c.secret_path, "/etc/vtorque/secret",
                         "root-only file of 32+ random bytes, identical on every node; "
                         "per-job SSH keys are derived from it"),
    "node_name": Field(c.optional(c.name), None,
                       "this node's name as the batch system knows it (null: the hostname)"),
    "hypervisor": Field(c.choice(HYPERVISORS), "auto",
                        "kvm, qemu (TCG software emulation) or auto (kvm when usable)"),
    "libvirt_uri": Field(c.uri, "qemu:///system", "libvirt connection URI"),
    "qemu_user": Field(c.name, "libvirt-qemu", "user QEMU runs as (owner of guest disks)"),
    "qemu_group": Field(c.name, "kvm", "group QEMU runs as (may traverse job directories)"),
    "machine_type": Field(c.choice(("q35", "pc")), "q35", "QEMU machine type of the guests"),
    "host_reserve": {
        "cores": Field(c.integer(0, 1024), 1, "cores kept for the host, never given to guests"),
        "memory": Field(c.size(0), "1G", "memory kept for the host"),
    },
    "defaults": {
        "img": Field(c.optional(c.name), None, "image used when the request names none"),
        "distro": Field(c.optional(c.name), None, "distro used to pick an image by distro"),
        "arch": Field(c.choice(ARCHES), "x86_64", "guest architecture"),
        "vcpus": Field(c.integer(1, 4096), 1, "virtual CPUs per guest"),
        "ram": Field(c.size(16), "1G", "memory per guest"),
        "vms_per_node": Field(c.integer(1, 256), 1, "guests per allocated node"),
        "vcpu_pinning": Field(c.boolean, False, "pin each vCPU to one host core"),
        "disk": Field(c.size(0), "0", "scratch disk for guest rank 0 (0 = none)"),
        "vrdma": Field(c.boolean, False, "RDMA device in every guest"),
        "fs_type": Field(c.choice(FS_TYPES), "sharedfs",
                         "where guest overlays live: sharedfs (state_dir) or ramdisk"),
        "hugepages": Field(c.hugepages, "no", "guest RAM from the node's huge page pool: "
                           "no, yes (2M pages), 2M or 1G"),
    },
    "limits": {
        "vcpus": Field(c.integer(1, 4096), 64, "most vCPUs per guest"),
        "ram": Field(c.size(16), "256G", "most memory per guest"),
        "min_ram": Field(c.size(16), "64M", "least memory per guest"),
        "vms_per_node": Field(c.integer(1, 256), 8, "most guests per node"),
        "disk": Field(c.size(0), "100G", "largest scratch disk"),
    },
    "timeouts": {
        "provision": Field(c.seconds, 240, "whole node-local start of a job's guests; keep it "
                           "below Torque's $prologalarm (300 s by default)"),
        "guest_ready": Field(c.seconds, 180, "one guest, from start to its ready signal"),
        "teardown": Field(c.seconds, 60, "destroying a job's guests and files"),
    },
    "snapshots": {
        "enabled": Field(c.boolean, True, "start the guests of images that opt in (snapshot: "
                         "true in their descriptor) from a template saved on this node "
                         "instead of booting them; false: every guest boots"),
        "template_timeout": Field(c.seconds, 180, "building one template: its boot to the "
                                  "snapshot point and the save"),
        "retry_after": Field(c.seconds, 600, "after a template failed to build or restore, "
                             "guests of its shape boot for this long before it is tried "
                             "again"),
        "keep": Field(c.integer(1, 1000), 8, "templates kept on a node (each about its "
                      "guest's memory in size); the least recently used go first"),
    },
    "batch": {
        "system": Field(c.choice(("auto", "torque", "openpbs", "slurm")), "auto",
                        "batch system: torque, openpbs, slurm, or auto (by the commands "
                        "found in bin_dir)"),
        "bin_dir": Field(c.abs_path, "/usr/bin", "directory of qsub, qstat, pbsnodes, sbatch, "
                         "scontrol; hooks never search PATH"),
        "shared_state_dir": Field(c.abs_path, "/var/spool/vtorque/shared",
                                  "directory on a file system shared by all nodes; the mother "
                                  "superior reads each node's guest status here"),
        "job_shell": Field(c.abs_path, "/usr/local/libexec/vtorque/job-shell",
                           "the shell vsub gives VM jobs (qsub -S): runs the script in guest "
                           "rank 0; installed by contrib/torque_hooks/install"),
        "max_requeues": Field(c.integer(0, 100), 3, "node faults that requeue a job before the "
                              "prologue aborts it instead"),
        "shares": Field(shares, [], "the cluster's file systems every VM job's guests see at "
                        "the same path (PATH, or PATH:ro read-only), besides the job's working "
                        "directory and the owner's home; served under the owner's identity"),
    },
    "network": {
        "mode": Field(c.choice(NETWORK_MODES), "none",
                      "none (no NIC), network (a libvirt network), bridge (a host bridge)"),
        "name": Field(c.name, "default", "libvirt network for mode=network"),
        "bridge": Field(c.name, "br0", "host bridge for mode=bridge"),
        "mac_prefix": Field(c.mac_prefix, "52:54:00", "first three octets of guest MACs"),
        "subnet": Field(c.subnet, "192.168.122.0/24", "guest subnet (IPv4 CIDR)"),
        "gateway": Field(c.optional(c.ipv4), "192.168.122.1",
                         "guests' default gateway and the host side of their network"),
        "pool_first": Field(c.integer(1, 16777214), 16,
                            "first host number in the subnet handed to guests"),
        "pool_last": Field(c.integer(1, 16777214), 254,
                           "last host number in the subnet handed to guests"),
        "mtu": Field(c.integer(576, 65520), 1500, "guest NIC MTU"),
        "isolate_jobs": Field(c.boolean, True, "libvirt nwfilter per NIC: a guest talks IPv4 "
                              "only with its own job's guests and the gateway"),
    },
    "ibverbs": {
        "sriov": Field(c.boolean, True, "give vrdma guests SR-IOV virtual functions of this "
                       "node's InfiniBand/RoCE adapters (VFIO passthrough)"),
        "soft_roce": Field(c.boolean, False, "where no adapter with free SR-IOV functions exists, "
                           "give vrdma guests Soft-RoCE (rdma_rxe on their virtio NIC): the "
                           "same verbs API, far slower; false refuses such jobs"),
        "devices": Field(c.names, [], "adapters (e.g. mlx5_0) whose functions guests may get; "
                         "empty: every adapter with SR-IOV enabled"),
        "transport": Field(c.choice(("ucx", "verbs")), "ucx",
                           "how Open MPI in the guests uses RDMA: ucx (pml ucx) or verbs "
                           "(btl openib)"),
        "guid_prefix": Field(c.guid_prefix, "02:76", "first two octets of the node and port "
                             "GUIDs set on a job's functions (locally administered)"),
        "pkey_first": Field(c.pkey, 0, "first partition key handed to jobs, one per job "
                            "(0: no per-job partition keys)"),
        "pkey_last": Field(c.pkey, 0, "last partition key handed to jobs"),
        "partitions_dir": Field(c.optional(c.abs_path), None,
                                "where the mother superior writes each job's OpenSM partition "
                                "(<job>.conf: its key and its port GUIDs) for the subnet "
                                "manager's host to merge; null: not written"),
        "sysfs_root": Field(c.abs_path, "/", "root under which sys/class/infiniband and "
                            "sys/bus/pci are read (tests point it at a fake tree)"),
    },
    "numa": {
        "bind": Field(c.boolean, True, "keep each guest's vCPUs and memory on the NUMA "
                      "node(s) of the cores the batch system gave the job (memory strict; a "
                      "guest spanning host nodes gets a NUMA topology mirroring them)"),
        "sysfs_root": Field(c.abs_path, "/", "root under which sys/devices/system/node and "
                            "sys/kernel/mm/hugepages are read (tests point it at a fake tree)"),
    },
}
