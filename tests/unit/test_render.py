"""Unit tests of vtorque.vm.render: domain XML from guest specs (faults item 17).

Golden files in tests/unit/golden/ hold the expected XML of three typical guests. After an
intended change to a template or to spec.py, regenerate them and review the diff:

    VTORQUE_REGEN_GOLDEN=1 .venv/bin/pytest -q tests/unit/test_render.py
    git diff tests/unit/golden/

Besides the byte-for-byte comparison, each golden test checks the facts that matter with
xml.etree, so a wrongly regenerated golden file still fails.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

from vtorque.vm.render import domain_xml
from vtorque.vm.shares import ShareSpec
from vtorque.vm.spec import DATA_SERIAL, METADATA_NS, DiskSpec, NicSpec

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("VTORQUE_REGEN_GOLDEN") == "1"
NS = {"vt": METADATA_NS}
SHARES = (ShareSpec("vtshare0", "/home/u", "/home/u", False, "home"),
          ShareSpec("vtshare1", "/home/u/work dir", "/home/u/work dir", False, "workdir"),
          ShareSpec("vtshare2", "/opt/site", "/opt/site", True, "site"))


def check_golden(name: str, xml: str) -> ET.Element:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(xml)
    assert path.exists(), f"{path} missing; run with VTORQUE_REGEN_GOLDEN=1"
    assert xml == path.read_text(), f"{name} differs; see the module docstring to regenerate"
    return ET.fromstring(xml)


def disks_of(root: ET.Element) -> list[tuple[str, str, str, bool]]:
    return [(d.find("source").get("file"), d.find("driver").get("type"),
             d.find("target").get("dev"), d.find("readonly") is not None)
            for d in root.findall("devices/disk")]


def test_golden_direct_kernel_no_network(make_specs, fixed) -> None:
    spec = make_specs("kernel", "vcpus=2,ram=512M", domain_type="qemu")[0]
    root = check_golden("kernel-no-network.xml", domain_xml(spec))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == spec.name
    assert root.findtext("memory") == "512" and root.find("memory").get("unit") == "MiB"
    assert root.findtext("vcpu") == "2"
    assert root.find("cputune") is None
    assert root.findtext("os/kernel") == f"{fixed.pool}/testguest.vmlinuz"
    assert root.findtext("os/initrd") == f"{fixed.pool}/testguest.initrd"
    assert root.findtext("os/cmdline") == spec.cmdline
    assert f"vtorque.ready={fixed.token(0)}" in spec.cmdline
    assert root.find("os/boot") is None
    assert root.find("cpu") is None  # no host-passthrough under TCG
    assert root.find("devices/interface") is None
    assert disks_of(root) == [(spec.seed.path, "raw", "vda", True)]
    assert root.find("devices/serial/log").get("file") == spec.console_log
    tag = root.find("metadata/vt:job", NS)
    assert (tag.get("id"), tag.get("rank"), tag.get("image")) == ("12.server", "0",
                                                                   "testguest")
    label = root.find("seclabel/label").text
    assert label == f"+{fixed.qemu_uid}:+{fixed.qemu_gid}"
    assert root.find("seclabel").get("relabel") == "no"


def test_golden_linux_overlay_scratch_seed_bridge_pinning(make_specs, fixed) -> None:
    specs = make_specs("linux", "vcpus=2,ram=2G,vms_per_node=2,disk=10G,vcpu_pinning=yes",
                       network={"mode": "bridge", "bridge": "br-hpc"},
                       host_reserve={"cores": 2})
    # The job's shares (its working directory, the owner's home, a read-only site share)
    # and QEMU under the owner's identity.
    spec = replace(specs[0], shares=SHARES, qemu_uid=4242, qemu_gid=4343, owner_uid=4242,
                   owner_gid=4343)
    root = check_golden("linux-overlay-scratch-bridge-pinned.xml", domain_xml(spec))
    assert root.find("seclabel/label").text == "+4242:+4343"
    assert root.find("seclabel").get("relabel") == "no"
    shares = [(f.get("accessmode"), f.get("multidevs"), f.find("driver").get("type"),
               f.find("source").get("dir"), f.find("target").get("dir"),
               f.find("readonly") is not None)
              for f in root.findall("devices/filesystem")]
    assert shares == [("passthrough", "remap", "path", "/home/u", "vtshare0", False),
                      ("passthrough", "remap", "path", "/home/u/work dir", "vtshare1", False),
                      ("passthrough", "remap", "path", "/opt/site", "vtshare2", True)]
    assert root.get("type") == "kvm"
    assert root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("os/kernel") is None and root.find("os/boot").get("dev") == "hd"
    assert [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")] == \
        [("0", "2"), ("1", "3")]
    assert disks_of(root) == [(spec.overlay.path, "qcow2", "vda", False),
                              (spec.scratch.path, "raw", "vdb", False),
                              (spec.seed.path, "raw", "vdc", True)]
    assert [d.findtext("serial") for d in root.findall("devices/disk")] == \
        [None, DATA_SERIAL, None]
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "br-hpc"
    assert nic.find("mac").get("address") == spec.nic.mac
    # The second guest: no scratch disk, its own pinning.
    second = ET.fromstring(domain_xml(specs[1]))
    assert [d[2] for d in disks_of(second)] == ["vda", "vdb"]
    assert [p.get("cpuset") for p in second.findall("cputune/vcpupin")] == ["4", "5"]


def test_golden_osv_with_network(make_specs) -> None:
    spec = make_specs("osv", "ram=256M", network={"mode": "network", "name": "vtnet"})[0]
    root = check_golden("osv-network.xml", domain_xml(spec))
    assert "(OSv)" in root.findtext("title")
    assert root.find("os/kernel") is None and root.find("os/cmdline") is None
    assert disks_of(root) == [(spec.overlay.path, "qcow2", "vda", False)]
    nic = root.find("devices/interface")
    assert nic.get("type") == "network"
    assert nic.find("source").get("network") == "vtnet"
    assert nic.find("mac").get("address") == spec.nic.mac
    assert root.find("metadata/vt:job", NS).get("image") == "osv-hello"


def test_golden_osv_direct_kernel_boot(make_specs, fixed) -> None:
    """OSv booted with its own kernel: the loader's command line carries the guest's
    address (OSv has no other way to learn a static one); the disk is still its root."""
    from vtorque.vm.addresses import AddressBlock
    image = replace(fixed.image("osv"), kernel=fixed.image("kernel").kernel,
                    cmdline="--rootfs=rofs --power-off-on-abort /libhttpserver-api.so")
    block = AddressBlock("12.server", first=(10 << 24) | (7 << 8) | 16, size=1, prefix=24,
                         gateway="10.0.7.1")
    spec = make_specs("osv", network={"mode": "network", "name": "vtnet",
                                      "subnet": "10.0.7.0/24", "gateway": "10.0.7.1"},
                      image=image, addresses=block, domain_type="qemu")[0]
    root = check_golden("osv-direct-kernel.xml", domain_xml(spec))
    assert root.findtext("os/kernel") == image.kernel.path
    assert root.find("os/initrd") is None and root.find("os/boot") is None
    assert root.findtext("os/cmdline") == (
        "--rootfs=rofs --power-off-on-abort --ip=eth0,10.0.7.16,255.255.255.0 "
        "--defaultgw=10.0.7.1 /libhttpserver-api.so")
    assert root.find("os/type").get("machine") == "pc"
    assert disks_of(root) == [(spec.overlay.path, "qcow2", "vda", False)]
    assert root.find("devices/filesystem") is None


def test_golden_vfio_function_and_an_isolated_nic(make_specs) -> None:
    """A guest with an SR-IOV function (VFIO on q35, memory locked) on a job network with
    per-job isolation (the nwfilter with the job's peers) and a site MTU."""
    from vtorque.vm.addresses import AddressBlock
    block = AddressBlock("12.server", first=(10 << 24) | (7 << 8) | 16, size=2, prefix=24,
                         gateway="10.0.7.1")
    spec = make_specs("linux", "vcpus=2,ram=1G,vrdma=yes", domain_type="qemu",
                      network={"mode": "network", "name": "vtnet", "mtu": 9000,
                               "subnet": "10.0.7.0/24", "gateway": "10.0.7.1"},
                      addresses=block, rdma="sriov",
                      functions={0: "0000:81:00.3"})[0]
    root = check_golden("linux-vfio-isolated-nic.xml", domain_xml(spec))
    assert root.find("os/type").get("machine") == "q35"
    assert root.find("memoryBacking/locked") is not None
    assert root.findtext("memtune/hard_limit") == str(1024 + 1024)
    source = root.find("devices/hostdev/source/address")
    assert (source.get("domain"), source.get("bus"), source.get("slot"),
            source.get("function")) == ("0x0000", "0x81", "0x00", "0x3")
    assert root.find("devices/hostdev").get("managed") == "yes"
    nic = root.find("devices/interface")
    assert nic.find("mtu").get("size") == "9000"
    ref = nic.find("filterref")
    assert ref.get("filter") == "vtorque-job"
    params = [(p.get("name"), p.get("value")) for p in ref.findall("parameter")]
    assert params == [("IP", "10.0.7.16"), ("PEERS", "10.0.7.16"), ("PEERS", "10.0.7.17"),
                      ("PEERS", "10.0.7.1")]


def test_golden_hugepages_guest_on_one_host_node(make_specs) -> None:
    """1 GiB pages for a guest whose pinned cores are on host node 1 of two: its memory
    strictly there, allocated as QEMU starts; no guest topology (it fits one node)."""
    from vtorque.vm.numa import Topology
    topology = Topology(((0, (0, 1, 2, 3)), (1, (4, 5, 6, 7))))
    spec = make_specs("linux", "vcpus=2,ram=4G,hugepages=1G,vcpu_pinning=yes",
                      domain_type="qemu", job_cores=(5, 6), topology=topology)[0]
    root = check_golden("linux-hugepages-node1.xml", domain_xml(spec))
    page = root.find("memoryBacking/hugepages/page")
    assert (page.get("size"), page.get("unit"), page.get("nodeset")) == ("1048576", "KiB",
                                                                         None)
    assert root.find("memoryBacking/allocation").get("mode") == "immediate"
    assert root.find("memoryBacking/locked") is None
    assert [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")] == \
        [("0", "5"), ("1", "6")]
    memory = root.find("numatune/memory")
    assert (memory.get("mode"), memory.get("nodeset")) == ("strict", "1")
    assert root.findall("numatune/memnode") == [] and root.find("cpu") is None


def test_golden_two_cell_numa_guest(make_specs) -> None:
    """A guest whose cores span both host nodes, unequally: two guest cells mirroring
    them, each bound to its host node; its vCPUs float over their cell's cores."""
    from vtorque.vm.numa import Topology
    topology = Topology(((0, (0, 1, 2, 3)), (1, (4, 5, 6, 7))))
    spec = make_specs("linux", "vcpus=6,ram=6G,hugepages=2M", job_cores=(2, 3, 4, 5, 6, 7),
                      topology=topology)[0]
    root = check_golden("linux-two-numa-cells.xml", domain_xml(spec))
    assert root.find("cpu").get("mode") == "host-passthrough"
    cells = [(c.get("id"), c.get("cpus"), c.get("memory"), c.get("unit"))
             for c in root.findall("cpu/numa/cell")]
    assert cells == [("0", "0-1", "2048", "MiB"), ("1", "2-5", "4096", "MiB")]
    assert root.find("numatune/memory").get("nodeset") == "0-1"
    assert [(m.get("cellid"), m.get("mode"), m.get("nodeset"))
            for m in root.findall("numatune/memnode")] == [("0", "strict", "0"),
                                                            ("1", "strict", "1")]
    assert [p.get("cpuset") for p in root.findall("cputune/vcpupin")] == \
        ["2-3", "2-3", "4-7", "4-7", "4-7", "4-7"]
    assert root.find("memoryBacking/hugepages/page").get("size") == "2048"


def test_huge_pages_with_vfio_share_one_memory_backing(make_specs) -> None:
    spec = make_specs("linux", "ram=2G,hugepages=yes,vrdma=yes", rdma="sriov",
                      functions={0: "0000:81:00.3"})[0]
    root = ET.fromstring(domain_xml(spec))
    [backing] = root.findall("memoryBacking")
    assert backing.find("hugepages") is not None and backing.find("locked") is not None
    assert root.findtext("memtune/hard_limit") == str(2048 + 1024)


def test_osv_guests_get_the_sites_mtu_too(make_specs) -> None:
    spec = make_specs("osv", network={"mode": "network", "mtu": 1450})[0]
    root = ET.fromstring(domain_xml(spec))
    assert root.find("devices/interface/mtu").get("size") == "1450"


@pytest.mark.skipif(REGEN, reason="the golden files are being written")
def test_golden_files_are_all_used() -> None:
    assert sorted(p.name for p in GOLDEN.glob("*.xml")) == [
        "kernel-no-network.xml", "linux-hugepages-node1.xml",
        "linux-overlay-scratch-bridge-pinned.xml", "linux-two-numa-cells.xml",
        "linux-vfio-isolated-nic.xml", "osv-direct-kernel.xml", "osv-network.xml"]


NASTY = "1<x>&\"' ]]> <!-- --> &amp;"


@pytest.mark.parametrize("kind", ["linux", "kernel", "osv"])
def test_metacharacters_are_escaped(make_specs, kind: str) -> None:
    spec = make_specs(kind, network={"mode": "network"})[0]
    spec = replace(
        spec, job_id=NASTY, hostname=NASTY, image_name=NASTY, name="vm<&>\"'",
        title=f"vtorque job {NASTY}",
        console_log=f"/var/log/{NASTY}.log",
        cmdline=None if spec.cmdline is None else spec.cmdline + " x=" + NASTY,
        nic=NicSpec("network", "net&<'\">", spec.nic.mac, 1500),
        overlay=replace(spec.overlay, path=f"/j/{NASTY}.qcow2") if spec.overlay else None,
        seed=DiskSpec(f"/j/{NASTY}.iso", "raw", "vdb", True) if spec.seed else None,
        shares=(ShareSpec("vtshare0", f"/w/{NASTY}", f"/w/{NASTY}", False, "workdir"),))
    xml = domain_xml(spec)
    assert "<x>" not in xml
    root = ET.fromstring(xml)  # well-formed despite the values
    assert root.findtext("name") == "vm<&>\"'"
    assert NASTY in root.findtext("title")
    tag = root.find("metadata/vt:job", NS)
    assert tag.get("id") == NASTY
    assert tag.get("image") == NASTY
    assert root.find("devices/serial/log").get("file") == f"/var/log/{NASTY}.log"
    assert root.find("devices/interface/source").get("network") == "net&<'\">"
    files = [d.find("source").get("file") for d in root.findall("devices/disk")]
    if spec.overlay:
        assert f"/j/{NASTY}.qcow2" in files
    if spec.seed:
        assert f"/j/{NASTY}.iso" in files
    if spec.cmdline:
        assert root.findtext("os/cmdline") == spec.cmdline
    assert [f.find("source").get("dir") for f in root.findall("devices/filesystem")] == \
        [f"/w/{NASTY}"]
    # Nothing injected: exactly the elements the template writes.
    assert len(root.findall("devices/interface")) == 1
    assert len(root.findall("metadata/*")) == 1


@pytest.mark.parametrize("kind", ["linux", "kernel", "osv"])
def test_the_template_decides_nothing(make_specs, kind: str) -> None:
    """The XML follows the spec's decisions only: the kind of guest, as such, changes
    nothing; the facts decided from it (machine, CPU mode, arch, rng) change exactly their
    elements."""
    spec = make_specs(kind, network={"mode": "network"})[0]
    other = "osv" if kind != "osv" else "linux"
    assert domain_xml(replace(spec, kind=other)) == domain_xml(spec)
    changed = ET.fromstring(domain_xml(replace(spec, machine="isapc", cpu_mode=None,
                                               arch="aarch64", rng=not spec.rng)))
    assert changed.find("os/type").get("machine") == "isapc"
    assert changed.find("os/type").get("arch") == "aarch64"
    assert changed.find("cpu") is None
    assert (changed.find("devices/rng") is not None) == (not spec.rng)
    # NUMA and huge pages: exactly what the spec says, nothing when it says nothing.
    plain = ET.fromstring(domain_xml(spec))
    assert [plain.find(p) for p in ("numatune", "memoryBacking", "cputune")] == [None] * 3
    from vtorque.vm.numa import Cell
    numa = ET.fromstring(domain_xml(replace(
        spec, cpu_mode=None, vcpus=2, vcpu_sets=("9", "9"), numa_nodeset="3", hugepage_kib=4,
        numa_cells=(Cell(3, (0,), (9,), 512), Cell(4, (1,), (9,), 512)))))
    assert numa.find("memoryBacking/hugepages/page").get("size") == "4"
    assert numa.find("numatune/memory").get("nodeset") == "3"
    assert [m.get("nodeset") for m in numa.findall("numatune/memnode")] == ["3", "4"]
    assert numa.find("cpu").get("mode") is None
    assert [c.get("cpus") for c in numa.findall("cpu/numa/cell")] == ["0", "1"]


def test_shares_data_disk_and_osv_kernel_are_valid_libvirt_xml(make_specs, fixed,
                                                                tmp_path: Path) -> None:
    """libvirt's own schema (virt-xml-validate) accepts the 9p shares, the data disk's
    serial, OSv's direct kernel boot, huge pages, NUMA binding and guest cells (under KVM
    and TCG, with VFIO) and every golden file."""
    import shutil
    import subprocess
    validate = shutil.which("virt-xml-validate")
    assert validate, "scripts/setup installs libvirt-clients (virt-xml-validate)"
    linux = replace(make_specs("linux", "disk=1G", network={"mode": "network"})[0],
                    shares=SHARES)
    osv_image = replace(fixed.image("osv"), kernel=fixed.image("kernel").kernel,
                        cmdline="--rootfs=rofs /libhttpserver-api.so")
    osv = make_specs("osv", network={"mode": "network"}, image=osv_image)[0]
    from vtorque.vm.numa import Topology
    topology = Topology(((0, (0, 1, 2, 3)), (1, (4, 5, 6, 7))))
    numa_guests = {
        name: make_specs("linux", request, domain_type=domain_type, job_cores=(2, 3, 4, 5),
                         topology=topology, **extra)[0]
        for name, request, domain_type, extra in (
            ("cells-kvm-pinned", "vcpus=4,ram=4G,hugepages=1G,vcpu_pinning=yes", "kvm", {}),
            ("cells-tcg-floating", "vcpus=4,ram=2G,hugepages=2M", "qemu", {}),
            ("one-node", "vcpus=2,vms_per_node=2,ram=1G,hugepages=2M", "qemu", {}),
            ("vfio-hugepages", "vcpus=2,ram=2G,hugepages=2M,vrdma=yes", "kvm",
             {"rdma": "sriov", "functions": {0: "0000:81:00.3"}}))}
    golden = {p.stem: p for p in GOLDEN.glob("*.xml")}
    for name, spec in (("linux", linux), ("osv", osv), *numa_guests.items(),
                       *((n, None) for n in golden)):
        path = golden[name] if spec is None else tmp_path / f"{name}.xml"
        if spec is not None:
            path.write_text(domain_xml(spec))
        done = subprocess.run([validate, str(path), "domain"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
