"""Facts about this node: cores, memory, free disk space, hypervisor availability."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeFacts:
    hostname: str
    cores: int
    memory_mib: int


def facts() -> NodeFacts:
    import psutil  # only when guests are about to start
    return NodeFacts(hostname=socket.gethostname(),
                     cores=psutil.cpu_count(logical=True) or 1,
                     memory_mib=psutil.virtual_memory().total >> 20)


def node_name(configured: str | None) -> str:
    """This node's name as the batch system knows it: config node_name, else hostname."""
    return configured or socket.gethostname()


def free_space_mib(path: str) -> int:
    """Free space of the file system holding `path` (or its closest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path) or "/"
    return shutil.disk_usage(path).free >> 20


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def domain_type(hypervisor: str) -> str:
    """Config hypervisor (kvm, qemu, auto) -> libvirt domain type (kvm or qemu)."""
    if hypervisor == "auto":
        return "kvm" if kvm_usable() else "qemu"
    return hypervisor
