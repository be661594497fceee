"""Unit tests of vtorque.vm.spec: every decision about a job's guests (no I/O)."""

from __future__ import annotations

import os
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtorque.journal import JobPaths, job_key
from vtorque.request import parse_request
from vtorque.vm.addresses import AddressBlock
from vtorque.vm.numa import guest_placements
from vtorque.vm.shares import ShareSpec
from vtorque.vm.spec import (
    DATA_SERIAL,
    READY_PREFIX,
    build_guest_specs,
    domain_name,
    hostname,
    mac_address,
    osv_cmdline,
)

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_JOB_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._\[\]@+-]{0,127}", fullmatch=True).filter(
    lambda s: ".." not in s)


# --- MAC addresses -------------------------------------------------------------------------

def test_mac_follows_from_the_job_and_rank_alone() -> None:
    """Every node derives every guest's MAC without asking: sha256 of "<job>\\0<rank>"."""
    import hashlib
    digest = hashlib.sha256(b"12.head\x003").digest()
    assert mac_address("52:54:00", "12.head", 3) == "52:54:00:" + ":".join(
        f"{b:02x}" for b in digest[:3])


def test_mac_differs_by_rank_and_job() -> None:
    macs = {mac_address("52:54:00", job, rank)
            for job in ("12", "123", "12[1]", "12[10]", "12_1_") for rank in range(4)}
    assert len(macs) == 20


@settings(database=None, deadline=None, max_examples=200)
@given(job_id=_JOB_IDS, rank=st.integers(0, 4095),
       prefix=st.sampled_from(["52:54:00", "02:00:00", "fe:ff:10"]))
def test_mac_shape_and_unicast(job_id: str, rank: int, prefix: str) -> None:
    mac = mac_address(prefix, job_id, rank)
    assert _MAC.fullmatch(mac)
    assert mac.startswith(prefix + ":")
    assert int(mac[:2], 16) & 1 == 0  # unicast: the multicast bit of the first octet is 0


# --- host names ----------------------------------------------------------------------------

@pytest.mark.parametrize("job_id, rank, expected", [
    ("12", 0, "vt12-0"),
    ("123.server", 3, "vt123-3"),
    ("12[1].server", 1, "vt12-1"),
    ("4711_3", 0, "vt4711-0"),
    ("12345678901234567890", 2, "vt123456789012-2"),
])
def test_hostname_from_job_number(job_id: str, rank: int, expected: str) -> None:
    assert hostname(job_id, rank) == expected


def test_hostname_without_leading_digits_uses_a_hash() -> None:
    name = hostname("abc.server", 0)
    assert re.fullmatch(r"vt[0-9a-f]{8}-0", name)
    assert name == hostname("abc.server", 0)
    assert name != hostname("abd.server", 0)


@settings(database=None, deadline=None, max_examples=300)
@given(job_id=_JOB_IDS, rank=st.integers(0, 99999))
def test_hostname_is_a_dns_label(job_id: str, rank: int) -> None:
    name = hostname(job_id, rank)
    assert _DNS_LABEL.fullmatch(name), name
    assert name.endswith(f"-{rank}")


def test_domain_name_is_per_job_and_rank(tmp_path) -> None:
    a = JobPaths.for_job("12", str(tmp_path), str(tmp_path))
    b = JobPaths.for_job("123", str(tmp_path), str(tmp_path))
    assert domain_name(a, 0) == f"vtorque-{job_key('12')}-0"
    assert domain_name(a, 1) != domain_name(a, 0)
    assert not domain_name(b, 0).startswith(domain_name(a, 0)[:-1])


# --- guest specs ---------------------------------------------------------------------------

def test_linux_guests_with_overlay_scratch_and_seed(make_specs, fixed) -> None:
    specs = make_specs("linux", "vms_per_node=3,disk=2G,vcpus=2,ram=512M")
    paths = JobPaths.for_job("12.server", fixed.state, fixed.ramdisk)
    assert [s.rank for s in specs] == [0, 1, 2]
    first = specs[0]
    assert first.name == f"vtorque-{paths.key}-0"
    assert first.kind in ("linux", "kernel")
    assert (first.vcpus, first.memory_mib, first.domain_type, first.machine) == \
        (2, 512, "kvm", "q35")
    assert first.overlay.path == os.path.join(paths.job_dir, first.name + ".qcow2")
    assert (first.overlay.format, first.overlay.target) == ("qcow2", "vda")
    assert (first.base_image, first.base_format) == (f"{fixed.pool}/deb12.qcow2", "qcow2")
    assert first.scratch.path == os.path.join(paths.job_dir, first.name + ".data.raw")
    assert (first.scratch.target, first.scratch_mib) == ("vdb", 2048)
    # Raw: the node writes the ext4 file system straight into it; the guest finds it by
    # its serial, not by a device name the guest may number differently.
    assert (first.scratch.format, first.scratch.serial) == ("raw", DATA_SERIAL)
    assert first.seed.path == os.path.join(paths.job_dir, first.name + ".seed.iso")
    assert (first.seed.format, first.seed.target, first.seed.readonly) == ("raw", "vdc", True)
    assert first.console_log == os.path.join(paths.job_dir, first.name + ".console.log")
    assert (first.kernel, first.initrd, first.cmdline) == (None, None, None)
    assert first.nic is None
    assert (first.qemu_uid, first.qemu_gid) == (fixed.qemu_uid, fixed.qemu_gid)
    assert (first.image_name, first.distro, first.job_id) == ("deb12", "debian", "12.server")
    assert first.ready_line == f"{READY_PREFIX} {fixed.token(0)}"


def test_only_rank_zero_gets_the_scratch_disk(make_specs) -> None:
    specs = make_specs("linux", "vms_per_node=3,disk=1G")
    assert specs[0].scratch is not None and specs[0].scratch_mib == 1024
    for spec in specs[1:]:
        assert spec.scratch is None and spec.scratch_mib == 0
        assert (spec.overlay.target, spec.seed.target) == ("vda", "vdb")


def test_no_scratch_without_disk(make_specs) -> None:
    assert all(s.scratch is None for s in make_specs("linux", "vms_per_node=2"))


def test_ranks_start_at_first_rank(make_specs, fixed) -> None:
    specs = make_specs("linux", "vms_per_node=3,disk=1G", first_rank=4)
    assert [s.rank for s in specs] == [4, 5, 6]
    assert [s.name.rsplit("-", 1)[1] for s in specs] == ["4", "5", "6"]
    assert [s.hostname for s in specs] == ["vt12-4", "vt12-5", "vt12-6"]
    assert [s.ready_token for s in specs] == [fixed.token(i) for i in range(3)]
    # Rank 0 lives on another node: no scratch disk here.
    assert all(s.scratch is None for s in specs)


def test_names_and_files_are_unique(make_specs) -> None:
    specs = make_specs("linux", "vms_per_node=4,disk=1G", network={"mode": "bridge"})
    for attr in ("name", "hostname", "console_log", "ready_token"):
        assert len({getattr(s, attr) for s in specs}) == 4
    assert len({s.nic.mac for s in specs}) == 4
    files = [d.path for s in specs for d in (s.overlay, s.scratch, s.seed) if d]
    assert len(set(files)) == len(files)


def test_ramdisk_puts_overlays_in_the_ramdisk_dir(make_specs, fixed) -> None:
    paths = JobPaths.for_job("12.server", fixed.state, fixed.ramdisk)
    specs = make_specs("linux", "vms_per_node=2,disk=1G,fs_type=ramdisk")
    for spec in specs:
        assert os.path.dirname(spec.overlay.path) == paths.ramdisk_dir
        # Seeds and console logs stay in the job directory.
        assert os.path.dirname(spec.seed.path) == paths.job_dir
        assert os.path.dirname(spec.console_log) == paths.job_dir
    assert os.path.dirname(specs[0].scratch.path) == paths.ramdisk_dir


def test_sharedfs_keeps_everything_in_the_job_dir(make_specs, fixed) -> None:
    paths = JobPaths.for_job("12.server", fixed.state, fixed.ramdisk)
    spec = make_specs("linux", "disk=1G,fs_type=sharedfs")[0]
    for path in (spec.overlay.path, spec.scratch.path, spec.seed.path, spec.console_log):
        assert os.path.dirname(path) == paths.job_dir


def test_kernel_guest(make_specs, fixed) -> None:
    specs = make_specs("kernel", "vms_per_node=2,disk=1G", domain_type="qemu")
    first = specs[0]
    assert first.kind in ("linux", "kernel")
    assert first.overlay is None and first.base_image is None and first.base_format is None
    assert first.kernel == f"{fixed.pool}/testguest.vmlinuz"
    assert first.initrd == f"{fixed.pool}/testguest.initrd"
    assert first.cmdline == (f"console=ttyS0 quiet vtorque.hostname=vt12-0 "
                             f"vtorque.ready={fixed.token(0)}")
    assert (first.scratch.target, first.seed.target) == ("vda", "vdb")
    assert specs[1].seed.target == "vda"
    assert specs[1].cmdline.endswith(f"vtorque.ready={fixed.token(1)}")


def test_kernel_guest_with_nic_asks_for_dhcp(make_specs) -> None:
    spec = make_specs("kernel", network={"mode": "network"})[0]
    assert spec.cmdline.endswith(" vtorque.net=dhcp")


def test_kernel_guest_without_image_cmdline(make_specs, fixed) -> None:
    image = replace(fixed.image("kernel"), cmdline="", initrd=None)
    spec = make_specs("kernel", image=image)[0]
    assert spec.cmdline == f"vtorque.hostname=vt12-0 vtorque.ready={fixed.token(0)}"
    assert spec.initrd is None


def test_osv_guest(make_specs) -> None:
    specs = make_specs("osv", "vms_per_node=2,disk=1G", network={"mode": "network"})
    first = specs[0]
    assert first.kind == "osv" and first.machine == "pc" and first.seed is None
    assert first.seed is None and first.cmdline is None and first.kernel is None
    assert (first.overlay.target, first.scratch.target) == ("vda", "vdb")
    assert first.base_format == "raw"
    assert first.nic.kind == "network" and first.nic.source == "default"


@pytest.mark.parametrize("mode, source", [("network", "default"), ("bridge", "br0")])
def test_nic_modes(make_specs, mode: str, source: str) -> None:
    spec = make_specs("linux", network={"mode": mode, "mac_prefix": "02:aa:bb"})[0]
    assert (spec.nic.kind, spec.nic.source) == (mode, source)
    assert spec.nic.mac == mac_address("02:aa:bb", "12.server", 0)


def test_network_none_means_no_nic(make_specs) -> None:
    assert make_specs("linux", network={"mode": "none"})[0].nic is None


def test_pinning(make_specs) -> None:
    specs = make_specs("linux", "vcpus=2,vms_per_node=3,vcpu_pinning=yes",
                       host_reserve={"cores": 1})
    assert [s.cpuset for s in specs] == [(1, 2), (3, 4), (5, 6)]
    unpinned = make_specs("linux", "vcpus=2,vms_per_node=2,vcpu_pinning=no")
    assert [s.cpuset for s in unpinned] == [(), ()]


def _pinned(cfg, request, job_cores=None) -> list[tuple[int, ...]]:
    return [p.cores if p.pinned else () for p in guest_placements(cfg, request, job_cores,
                                                                   None)]


def test_pinned_cores_respects_the_reserve(make_config) -> None:
    cfg = make_config({"host_reserve": {"cores": 4}})
    request = parse_request("vcpus=3,vms_per_node=3,vcpu_pinning=yes", cfg)
    assert _pinned(cfg, request) == [(4, 5, 6), (7, 8, 9), (10, 11, 12)]


def test_pinned_guests_take_only_the_jobs_cores(make_config) -> None:
    """The cores the batch system gave the job, in order: never the reserve's rule,
    never a core outside the job's."""
    cfg = make_config({"host_reserve": {"cores": 1}})
    request = parse_request("vcpus=2,vms_per_node=2,vcpu_pinning=yes", cfg)
    assert _pinned(cfg, request, (5, 7, 12, 13)) == [(5, 7), (12, 13)]


def test_one_token_per_guest_is_required(make_config, fixed) -> None:
    cfg = make_config()
    with pytest.raises(ValueError, match="one ready token per guest"):
        build_guest_specs(paths=JobPaths.for_job("1", fixed.state, fixed.ramdisk),
                          request=parse_request("vms_per_node=2", cfg),
                          image=fixed.image("linux"), config=cfg, domain_type="kvm",
                          first_rank=0, tokens=["a"], qemu_uid=1, qemu_gid=1)


def test_every_node_derives_the_same_guests(make_specs) -> None:
    """Node 0 and node 1 build their own ranks only, yet agree on the names, host names and
    MACs of a rank (no node asks another)."""
    node0 = make_specs("linux", "vms_per_node=2", first_rank=0, network={"mode": "network"})
    node1 = make_specs("linux", "vms_per_node=2", first_rank=2, network={"mode": "network"})
    again = make_specs("linux", "vms_per_node=2", first_rank=2, network={"mode": "network"})
    assert [s.rank for s in node0 + node1] == [0, 1, 2, 3]
    assert len({s.name for s in node0 + node1}) == 4
    assert [(s.name, s.hostname, s.nic.mac) for s in node1] == \
        [(s.name, s.hostname, s.nic.mac) for s in again]


# --- OSv direct kernel boot, shares, the owner -------------------------------------------

OSV_OPTIONS = "--rootfs=rofs --power-off-on-abort /libhttpserver-api.so"


def test_osv_cmdline_puts_the_address_among_the_loader_options() -> None:
    """OSv waits for DHCP forever without --ip: each guest's address goes between the
    loader's options and the command, which OSv reads as the program to run."""
    from vtorque.vm.spec import NicSpec
    nic = NicSpec("network", "vtorque", "52:54:00:00:00:01", 1500, "192.168.122.61", 24,
                  "192.168.122.1")
    assert osv_cmdline(OSV_OPTIONS, nic) == (
        "--rootfs=rofs --power-off-on-abort --ip=eth0,192.168.122.61,255.255.255.0 "
        "--defaultgw=192.168.122.1 /libhttpserver-api.so")
    no_gw = NicSpec("network", "v", "52:54:00:00:00:01", 1500, "10.1.2.3", 16, None)
    assert osv_cmdline(OSV_OPTIONS, no_gw).split()[2:4] == [
        "--ip=eth0,10.1.2.3,255.255.0.0", "/libhttpserver-api.so"]
    assert osv_cmdline(OSV_OPTIONS, None) == OSV_OPTIONS
    assert osv_cmdline("--nomount", nic).endswith("--defaultgw=192.168.122.1")


def test_osv_guest_boots_the_images_kernel_directly(make_specs, fixed) -> None:
    image = replace(fixed.image("osv"),
                    kernel=fixed.image("kernel").kernel, cmdline=OSV_OPTIONS)
    import ipaddress
    block = AddressBlock("12.server", int(ipaddress.IPv4Address("192.168.122.61")), 2, 24,
                         "192.168.122.1")
    spec = make_specs("osv", network={"mode": "network"}, image=image, addresses=block)[0]
    assert spec.kernel == image.kernel.path and spec.initrd is None
    assert f"--ip=eth0,{spec.nic.address},255.255.255.0" in spec.cmdline.split()
    assert spec.cmdline.split()[-1] == "/libhttpserver-api.so"
    assert spec.overlay is not None              # its root file system stays the disk
    assert spec.machine == "pc" and spec.shares == ()


SHARES = (ShareSpec("vtshare0", "/home/u", "/home/u", False, "home"),
          ShareSpec("vtshare1", "/scratch", "/scratch", True, "site"))


def specs_with(make_config, fixed, kind: str, **extra):
    cfg = make_config()
    request = parse_request("vms_per_node=2,disk=1G", cfg)
    return build_guest_specs(paths=JobPaths.for_job("7", fixed.state, fixed.ramdisk),
                             request=request, image=fixed.image(kind), config=cfg,
                             domain_type="qemu", first_rank=0, tokens=["a", "b"],
                             qemu_uid=4242, qemu_gid=4343, **extra)


@pytest.mark.parametrize("kind", ["linux", "kernel"])
def test_linux_guests_mount_the_shares_and_know_the_owner(make_config, fixed,
                                                          kind: str) -> None:
    plain = specs_with(make_config, fixed, kind)
    assert all(s.shares == () and s.owner_uid is None for s in plain)
    specs = specs_with(make_config, fixed, kind, shares=SHARES, owner=(4242, 4343))
    assert all(s.shares == SHARES for s in specs)
    assert {(s.owner_uid, s.owner_gid) for s in specs} == {(4242, 4343)}


def test_osv_guests_mount_no_shares(make_config, fixed) -> None:
    assert specs_with(make_config, fixed, "osv", shares=SHARES)[0].shares == ()
