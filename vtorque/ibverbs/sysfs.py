"""What RDMA hardware this node has, read from sysfs (no writes here).

HCAs come from `<root>/sys/class/infiniband`, each with its ports and, through its PCI
device (`<root>/sys/bus/pci/devices/<address>`), its SR-IOV state and virtual functions
(`virtfnN` links). The formats are the kernel's (drivers/infiniband/core/sysfs.c and the
PCI core): port state "4: ACTIVE", link layer "InfiniBand" or "Ethernet", pkeys "0x%04x".
`root` is "/" on a node and a fake tree in tests.

A function bound to its host driver shows up as an HCA of its own (mlx5_3 with a
`physfn` link); those are listed under their parent, never as adapters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLASS_DIR = "sys/class/infiniband"
PCI_DIR = "sys/bus/pci/devices"


@dataclass(frozen=True)
class Port:
    number: int
    state: str            # ACTIVE, DOWN, INIT, ARMED, ... ("" when unreadable)
    phys_state: str       # LinkUp, Polling, Disabled, ...
    link_layer: str       # InfiniBand | Ethernet | Unknown
    rate: str             # "100 Gb/sec (4X EDR)"
    pkeys: tuple[str, ...] = ()   # non-zero entries of the port's pkey table

    @property
    def active(self) -> bool:
        return self.state == "ACTIVE"


@dataclass(frozen=True)
class VirtualFunction:
    index: int            # N of the PF's virtfnN link
    pci: str              # 0000:03:00.1
    driver: str | None    # mlx5_core, vfio-pci, ... (None: unbound)


@dataclass(frozen=True)
class Hca:
    name: str             # mlx5_0
    pci: str              # the physical function's PCI address
    node_guid: str
    hca_type: str
    fw_ver: str
    ports: tuple[Port, ...]
    sriov_total: int      # sriov_totalvfs (0: no SR-IOV)
    sriov_enabled: int    # sriov_numvfs
    vfs: tuple[VirtualFunction, ...]
    ofed_sriov: bool      # MLNX_OFED's per-function sriov/<N>/{node,port,policy} files
    netdevs: tuple[str, ...]   # the PF's network devices (IPoIB ib0, or the Ethernet NIC)

    @property
    def link_layer(self) -> str:
        return self.ports[0].link_layer if self.ports else "Unknown"

    @property
    def active(self) -> bool:
        return any(port.active for port in self.ports)


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _after_colon(text: str) -> str:
    """'4: ACTIVE' -> 'ACTIVE' (the kernel prefixes the numeric value)."""
    return text.split(":", 1)[1].strip() if ":" in text else text


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        return 0


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _port(directory: str, number: int) -> Port:
    pkeys = []
    for entry in sorted(_listdir(os.path.join(directory, "pkeys")), key=_int):
        value = _read(os.path.join(directory, "pkeys", entry))
        if _int(value) & 0x7fff:
            pkeys.append(value)
    return Port(number=number,
                state=_after_colon(_read(os.path.join(directory, "state"))),
                phys_state=_after_colon(_read(os.path.join(directory, "phys_state"))),
                link_layer=_read(os.path.join(directory, "link_layer")) or "Unknown",
                rate=_read(os.path.join(directory, "rate")),
                pkeys=tuple(pkeys))


def _driver(pci_dir: str) -> str | None:
    link = os.path.join(pci_dir, "driver")
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def _vfs(pci_dir: str) -> tuple[VirtualFunction, ...]:
    found = []
    for entry in _listdir(pci_dir):
        if not entry.startswith("virtfn") or not entry[6:].isdigit():
            continue
        link = os.path.join(pci_dir, entry)
        try:
            target = os.path.realpath(link)
        except OSError:
            continue
        found.append(VirtualFunction(int(entry[6:]), os.path.basename(target),
                                     _driver(target)))
    return tuple(sorted(found, key=lambda vf: vf.index))


def pci_device_dir(root: str, pci: str) -> str:
    return os.path.join(root, PCI_DIR, pci)


def discover(root: str = "/") -> list[Hca]:
    """Every physical RDMA adapter under `root`, sorted by name."""
    class_dir = os.path.join(root, CLASS_DIR)
    hcas = []
    for name in _listdir(class_dir):
        directory = os.path.join(class_dir, name)
        pci_dir = os.path.realpath(os.path.join(directory, "device"))
        if os.path.lexists(os.path.join(pci_dir, "physfn")):
            continue    # a virtual function bound on the host: listed under its parent
        ports = tuple(_port(os.path.join(directory, "ports", entry), int(entry))
                      for entry in _listdir(os.path.join(directory, "ports"))
                      if entry.isdigit())
        hcas.append(Hca(
            name=name, pci=os.path.basename(pci_dir),
            node_guid=_read(os.path.join(directory, "node_guid")),
            hca_type=_read(os.path.join(directory, "hca_type")),
            fw_ver=_read(os.path.join(directory, "fw_ver")),
            ports=tuple(sorted(ports, key=lambda p: p.number)),
            sriov_total=_int(_read(os.path.join(pci_dir, "sriov_totalvfs"))),
            sriov_enabled=_int(_read(os.path.join(pci_dir, "sriov_numvfs"))),
            vfs=_vfs(pci_dir),
            ofed_sriov=os.path.isdir(os.path.join(pci_dir, "sriov")),
            netdevs=tuple(_listdir(os.path.join(pci_dir, "net")))))
    return hcas


def usable(hcas: list[Hca], allowed: tuple[str, ...] = ()) -> list[Hca]:
    """Adapters whose functions may go to guests: allowed by the config (empty: all),
    a port up, SR-IOV enabled with functions present."""
    return [h for h in hcas
            if (not allowed or h.name in allowed) and h.active and h.sriov_enabled > 0
            and h.vfs]
