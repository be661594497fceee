"""Stand-in for RDMA hardware: fake sysfs trees modelled on a real mlx5 (ConnectX) layout.

No InfiniBand hardware exists here, so discovery and VF allocation are tested against
trees laid out as the recorded notes of a real mlx5 adapter describe: the adapter in
sys/class/infiniband as a link into its PCI device, ports with the kernel's formats
("4: ACTIVE", "5: LinkUp", "0x%04x" pkeys), SR-IOV files and virtfnN/physfn links on the
PCI devices, and MLNX_OFED's sriov/<N>/{node,port,policy} files (optional: the upstream
driver has none). Values are the sample values of those notes.
"""

from __future__ import annotations

import os
from pathlib import Path

PCI_ROOT = "sys/devices/pci0000:00"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def vf_address(bus: int, index: int) -> str:
    """PCI address of VF `index` of the PF at bus:00.0 (offset 1, stride 1, ARI)."""
    function = index + 1
    return f"0000:{bus:02x}:{function // 8:02x}.{function % 8}"


def add_hca(root: Path, name: str = "mlx5_0", *, bus: int = 3, link_layer: str = "InfiniBand",
            state: str = "4: ACTIVE", total_vfs: int = 16, num_vfs: int = 8,
            ofed: bool = True, netdev: str | None = "ib0",
            vf_driver: str | None = "mlx5_core", host_vf_hcas: int = 0) -> list[str]:
    """One adapter; returns its VFs' PCI addresses. `host_vf_hcas` of the VFs are also
    visible as HCAs of their own (bound to mlx5_core on the host, as mlx5_<n+1>...)."""
    pf = f"0000:{bus:02x}:00.0"
    pf_dir = root / PCI_ROOT / pf
    ib_dir = pf_dir / "infiniband" / name
    _write(ib_dir / "node_guid", "ec0d:9a03:0044:368c\n")
    _write(ib_dir / "sys_image_guid", "ec0d:9a03:0044:368c\n")
    _write(ib_dir / "node_type", "1: CA\n")
    _write(ib_dir / "fw_ver", "14.28.2006\n")
    _write(ib_dir / "hca_type", "MT4118\n")
    _write(ib_dir / "board_id", "SM_2001000001034\n")
    port = ib_dir / "ports" / "1"
    _write(port / "state", state + "\n")
    _write(port / "phys_state", ("5: LinkUp" if "ACTIVE" in state else "3: Disabled") + "\n")
    _write(port / "rate", "100 Gb/sec (4X EDR)\n")
    _write(port / "link_layer", link_layer + "\n")
    _write(port / "lid", "0x1\n")
    _write(port / "gids" / "0", "fe80:0000:0000:0000:ec0d:9a03:0044:368d\n")
    for index, value in enumerate(("0xffff", "0x800b", "0x0000")):
        _write(port / "pkeys" / str(index), value + "\n")
    _link(ib_dir / "device", "../../../" + pf)
    _link(root / "sys/class/infiniband" / name, f"../../devices/pci0000:00/{pf}/infiniband/{name}")
    _link(root / "sys/bus/pci/devices" / pf, f"../../../devices/pci0000:00/{pf}")
    (root / "sys/bus/pci/drivers/mlx5_core").mkdir(parents=True, exist_ok=True)
    (root / "sys/bus/pci/drivers/vfio-pci").mkdir(parents=True, exist_ok=True)
    _link(pf_dir / "driver", "../../../bus/pci/drivers/mlx5_core")
    if netdev:
        (pf_dir / "net" / netdev).mkdir(parents=True)
    _write(pf_dir / "sriov_totalvfs", f"{total_vfs}\n")
    _write(pf_dir / "sriov_numvfs", f"{num_vfs}\n")
    vfs = []
    for index in range(num_vfs):
        vf = vf_address(bus, index)
        vf_dir = root / PCI_ROOT / vf
        vf_dir.mkdir(parents=True)
        _link(vf_dir / "physfn", f"../{pf}")
        _link(pf_dir / f"virtfn{index}", f"../{vf}")
        _link(root / "sys/bus/pci/devices" / vf, f"../../../devices/pci0000:00/{vf}")
        if vf_driver:
            _link(vf_dir / "driver", f"../../../bus/pci/drivers/{vf_driver}")
        if ofed and link_layer == "InfiniBand":
            for attr, value in (("node", "00:00:00:00:00:00:00:00"),
                                ("port", "00:00:00:00:00:00:00:00"), ("policy", "Down")):
                _write(pf_dir / "sriov" / str(index) / attr, value + "\n")
        if index < host_vf_hcas:
            vf_name = f"{name[:-1]}{int(name[-1]) + 1 + index}"
            vf_ib = vf_dir / "infiniband" / vf_name
            _write(vf_ib / "node_guid", "0000:0000:0000:0000\n")
            _write(vf_ib / "ports" / "1" / "state", "1: DOWN\n")
            _write(vf_ib / "ports" / "1" / "link_layer", link_layer + "\n")
            _link(vf_ib / "device", "../../../" + vf)
            _link(root / "sys/class/infiniband" / vf_name,
                  f"../../devices/pci0000:00/{vf}/infiniband/{vf_name}")
        vfs.append(vf)
    return vfs


def bind(root: Path, vf: str, driver: str | None) -> None:
    """Rebind a VF (as libvirt's managed hostdev does with vfio-pci)."""
    link = root / PCI_ROOT / vf / "driver"
    if link.is_symlink():
        link.unlink()
    if driver:
        os.symlink(f"../../../bus/pci/drivers/{driver}", link)


def ofed_attr(root: Path, bus: int, index: int, attr: str) -> str:
    return (root / PCI_ROOT / f"0000:{bus:02x}:00.0" / "sriov" / str(index) / attr) \
        .read_text().strip()


def connectx_node(root: Path) -> list[str]:
    """A node with one ConnectX-style InfiniBand HCA and 8 VFs (MLNX_OFED driver)."""
    return add_hca(root, host_vf_hcas=2)


def node_without_sriov(root: Path) -> None:
    """An InfiniBand HCA whose firmware has SR-IOV off."""
    add_hca(root, total_vfs=0, num_vfs=0)


def roce_node(root: Path) -> list[str]:
    """A RoCE (Ethernet link layer) adapter with 4 VFs."""
    return add_hca(root, link_layer="Ethernet", num_vfs=4, netdev="enp3s0f0", ofed=False)
