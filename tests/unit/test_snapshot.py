"""Snapshot starts without QEMU: which guests may be restored, what a template depends on,
the XML of a restored guest (from a template definition recorded from the real libvirt),
the save image header, and the template store's rules."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vtorque.errors import HypervisorError
from vtorque.vm import snapshot
from vtorque.vm.render import domain_xml
from vtorque.vm.shares import ShareSpec
from vtorque.vm.template_store import TemplateStore

DATA = Path(__file__).resolve().parents[1] / "data"
RECORDED = (DATA / "libvirt-9.0-template-definition.xml").read_text()
VERSIONS = (7002022, 9000000)
HOME_SHARE = ShareSpec("vtshare0", "/home/u", "/home/u", False, "home")


def opted_in(image):
    return dataclasses.replace(image, snapshot=True)


@pytest.fixture
def kernel_spec(make_specs, fixed):
    def make(request: str = "vcpus=1", **overrides):
        # The test guest shares the node's root (tag hostroot), as the recorded one did.
        return [dataclasses.replace(s, host_share=True)
                for s in make_specs("kernel", request, domain_type="qemu", **overrides)]
    return make


# --- who may start from a template -----------------------------------------------------------

def test_only_opted_in_direct_boot_guests_without_vfs_may_be_restored(
        kernel_spec, make_specs, fixed, make_config) -> None:
    config = make_config({})
    spec = kernel_spec()[0]
    image = fixed.image("kernel")
    assert "does not opt in" in snapshot.not_eligible(spec, image, config)
    assert snapshot.not_eligible(spec, opted_in(image), config) is None
    off = make_config({"snapshots": {"enabled": False}})
    assert "off" in snapshot.not_eligible(spec, opted_in(image), off)
    with_vf = dataclasses.replace(spec, hostdevs=("0000:03:00.1",))
    assert "VFIO" in snapshot.not_eligible(with_vf, opted_in(image), config)
    linux = make_specs("linux")[0]
    assert "kind linux" in snapshot.not_eligible(linux, opted_in(fixed.image("linux")),
                                                 config)


def test_the_shape_changes_with_the_image_qemu_libvirt_and_the_hardware(
        kernel_spec, fixed) -> None:
    image = opted_in(fixed.image("kernel"))
    spec = kernel_spec()[0]
    base = snapshot.shape_of(spec, image, VERSIONS).key()
    # The same shape for every guest of any job: ranks, names, tokens, owners differ.
    other_job = kernel_spec("vcpus=1,vms_per_node=2", job_id="99")[1]
    assert snapshot.shape_of(other_job, image, VERSIONS).key() == base
    changed = [
        snapshot.shape_of(kernel_spec("vcpus=2")[0], image, VERSIONS),
        snapshot.shape_of(kernel_spec("ram=512M")[0], image, VERSIONS),
        snapshot.shape_of(dataclasses.replace(spec, machine="pc"), image, VERSIONS),
        snapshot.shape_of(spec, image, (7002023, VERSIONS[1])),
        snapshot.shape_of(spec, image, (VERSIONS[0], 9001000)),
        snapshot.shape_of(spec, dataclasses.replace(
            image, initrd=dataclasses.replace(image.initrd, sha256="e" * 64)), VERSIONS),
        snapshot.shape_of(dataclasses.replace(
            spec, shares=(HOME_SHARE,)), image, VERSIONS),
    ]
    keys = {shape.key() for shape in changed}
    assert base not in keys and len(keys) == len(changed)


def test_the_template_guest_carries_nothing_of_a_job(kernel_spec, fixed) -> None:
    spec = dataclasses.replace(kernel_spec()[0], cpuset=(3,),
                               shares=(HOME_SHARE,))
    image = opted_in(fixed.image("kernel"))
    shape = snapshot.shape_of(spec, image, VERSIONS)
    template = snapshot.template_spec(spec, shape, name="vtorque-template-x", token="t0k",
                                      console_log="/s/t/console.log",
                                      placeholder_dir="/s/t/empty", qemu_uid=1, qemu_gid=2)
    xml = domain_xml(template)
    root = ET.fromstring(xml)
    assert root.find("devices/disk") is None and root.find("devices/interface") is None
    assert root.find("genid") is not None
    assert root.find("os/cmdline").text == "console=ttyS0 quiet vtorque.template=t0k"
    assert spec.hostname not in xml and spec.ready_token not in xml
    assert [fs.find("source").get("dir") for fs in root.findall("devices/filesystem")] \
        == ["/", "/s/t/empty"]
    ports = [c for c in root.findall("devices/controller")
             if c.get("model") == "pcie-root-port"]
    # One port per PCI device of its own (host root, the share, rng), one per device a
    # restore may hot-plug (seed, data disk, NIC), one to spare.
    assert len(ports) == 3 + snapshot.HOTPLUG_DEVICES + 1
    assert root.find(f"metadata/{{{snapshot.METADATA_NS}}}job") is None
    assert root.find(f"metadata/{{{snapshot.METADATA_NS}}}template").get("key") == \
        shape.key()
    # It runs where the job's guest will: placement is not part of the saved state.
    assert [p.get("cpuset") for p in root.findall("cputune/vcpupin")] == ["3"]


# --- the restored guest's XML ----------------------------------------------------------------

def test_a_restored_guest_keeps_the_templates_machine_and_takes_its_own_identity(
        kernel_spec) -> None:
    spec = dataclasses.replace(kernel_spec("vcpus=1,vcpu_pinning=yes")[0], cpuset=(1,))
    own = domain_xml(spec)
    restored = ET.fromstring(snapshot.restored_domain_xml(RECORDED, own))
    template = ET.fromstring(RECORDED)
    assert restored.find("name").text == spec.name
    assert restored.find("uuid") is None                      # libvirt makes a new one
    assert restored.find("genid") is not None and not restored.find("genid").text
    assert restored.find("title").text == spec.title
    tag = restored.find(f"metadata/{{{snapshot.METADATA_NS}}}job")
    assert tag.get("id") == spec.job_id and tag.get("rank") == str(spec.rank)
    label = restored.find("seclabel/label").text
    assert label == f"+{spec.qemu_uid}:+{spec.qemu_gid}"
    assert [p.get("cpuset") for p in restored.findall("cputune/vcpupin")] == ["1"]
    for kind in ("serial", "console"):
        assert restored.find(f"devices/{kind}/log").get("file") == spec.console_log
    # The machine is the template's, device for device, address for address.
    def machine(root):
        return [ET.tostring(d) for d in root.find("devices")
                if d.tag not in ("serial", "console")]
    assert machine(restored) == machine(template)
    assert restored.find("os/cmdline").text == template.find("os/cmdline").text
    args = [a.get("value") for a in restored.iter(f"{{{snapshot.QEMU_NS}}}arg")]
    assert args == ["-incoming", "defer"]
    # libvirt's schema order: genid right after name (uuid gone), seclabel after devices.
    tags = [child.tag for child in restored]
    assert tags[:3] == ["name", "genid", "title"]
    assert tags.index("seclabel") > tags.index("devices")


def test_a_restored_guests_shares_point_at_its_own_directories(kernel_spec) -> None:
    spec = dataclasses.replace(kernel_spec()[0], shares=(HOME_SHARE,))
    template = RECORDED.replace(
        "      <alias name='fs0'/>",
        "      <alias name='fs0'/>\n    </filesystem>\n"
        "    <filesystem type='mount' accessmode='passthrough'>\n"
        "      <source dir='/var/lib/vtorque/templates/empty'/>\n"
        "      <target dir='vtshare0'/>", 1)
    restored = ET.fromstring(snapshot.restored_domain_xml(template, domain_xml(spec)))
    sources = {fs.find("target").get("dir"): fs.find("source").get("dir")
               for fs in restored.findall("devices/filesystem")}
    assert sources == {"hostroot": "/", "vtshare0": "/home/u"}
    # A guest whose shares differ from the template's is never restored from it.
    with pytest.raises(HypervisorError, match="no share for the template's tag vtshare0"):
        snapshot.restored_domain_xml(template, domain_xml(kernel_spec()[0]))
    with pytest.raises(HypervisorError, match="template has no share for tag"):
        snapshot.restored_domain_xml(RECORDED, domain_xml(spec))


def test_the_hot_plugged_devices_are_the_guests_disks_then_its_nic(make_specs) -> None:
    spec = make_specs("kernel", "vcpus=1,disk=1G", network={"mode": "bridge"},
                      domain_type="qemu")[0]
    devices = [ET.fromstring(d) for d in snapshot.hotplug_devices(domain_xml(spec))]
    assert [d.tag for d in devices] == ["disk", "disk", "interface"]
    assert devices[0].find("source").get("file") == spec.scratch.path
    assert devices[1].find("source").get("file") == spec.seed.path
    assert devices[2].find("mac").get("address") == spec.nic.mac


def test_the_seed_of_a_restored_guest_holds_its_command_line_and_fresh_entropy(
        kernel_spec) -> None:
    spec = kernel_spec()[0]
    one, two = snapshot.restore_documents(spec), snapshot.restore_documents(spec)
    assert one[snapshot.SEED_CMDLINE] == spec.cmdline + "\n"
    assert f"vtorque.ready={spec.ready_token}" in one[snapshot.SEED_CMDLINE]
    assert len(bytes.fromhex(one[snapshot.SEED_ENTROPY].strip())) == snapshot.ENTROPY_BYTES
    assert one[snapshot.SEED_ENTROPY] != two[snapshot.SEED_ENTROPY]
    assert snapshot.restore_documents(spec, now=1796200000.7)[snapshot.SEED_TIME] == \
        "1796200000\n"


# --- libvirt's save image ----------------------------------------------------------------

def save_header(xml: bytes, version: int = 2, compressed: int = 0,
                magic: bytes = snapshot.SAVE_MAGIC) -> bytes:
    return snapshot.SAVE_HEADER.pack(magic, version, len(xml), 1, compressed, 0) + xml


def test_the_migration_stream_is_found_after_the_header_and_its_xml() -> None:
    xml = b"<domain/>" + b"\0" * 100
    data = save_header(xml) + snapshot.STREAM_MAGIC + b"\0\0\0\3"
    assert snapshot.stream_offset(data) == snapshot.SAVE_HEADER.size + len(xml)
    assert snapshot.SAVE_HEADER.size == 92      # libvirt's struct _virQEMUSaveHeader


@pytest.mark.parametrize("data, problem", [
    (b"LibvirtQemudSave", "truncated"),
    (save_header(b"<d/>", magic=b"SomethingElse!!!") + b"QEVM", "not a libvirt save image"),
    (save_header(b"<d/>", version=9) + b"QEVM", "version 9"),
    (save_header(b"<d/>", compressed=1) + b"QEVM", "compressed"),
    (save_header(b"<d/>") + b"XXXX", "no QEMU migration stream"),
    (save_header(b"<d/>")[:-2], "no QEMU migration stream"),
])
def test_a_save_image_vtorque_cannot_restore_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(HypervisorError, match=problem):
        snapshot.stream_offset(data)


# --- the template store ---------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the store trusts root's files only")


def publish(store: TemplateStore, shape, state: bytes = b"S" * 200) -> None:
    with store.locked(shape.key()) as directory:
        Path(directory, "state").write_bytes(state)
        store.publish(shape, directory, RECORDED, 100, 1.5)


@needs_root
def test_a_template_is_found_only_for_its_exact_shape(tmp_path, kernel_spec, fixed) -> None:
    store = TemplateStore(str(tmp_path / "state"))
    image = opted_in(fixed.image("kernel"))
    shape = snapshot.shape_of(kernel_spec()[0], image, VERSIONS)
    assert store.find(shape) is None
    publish(store, shape)
    found = store.find(shape)
    assert found is not None and (found.offset, found.size, found.xml) == (100, 200, RECORDED)
    assert store.find(snapshot.shape_of(kernel_spec("vcpus=2")[0], image, VERSIONS)) is None
    for path, mode in ((store.root, 0o711), (store.empty_dir, 0o755),
                       (store.directory(shape.key()), 0o700), (found.state, 0o600)):
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777) == (0, mode), path


@needs_root
def test_a_template_that_is_not_roots_alone_or_was_changed_is_not_used(
        tmp_path, kernel_spec, fixed) -> None:
    store = TemplateStore(str(tmp_path / "state"))
    shape = snapshot.shape_of(kernel_spec()[0], opted_in(fixed.image("kernel")), VERSIONS)
    publish(store, shape)
    state = store.find(shape).state
    os.chmod(state, 0o644)
    assert store.find(shape) is None                 # readable by others
    os.chmod(state, 0o600)
    os.chown(state, 4242, 0)
    assert store.find(shape) is None                 # not root's
    os.chown(state, 0, 0)
    Path(state).write_bytes(b"S" * 150)
    assert store.find(shape) is None                 # not the size recorded
    Path(state).write_bytes(b"S" * 200)
    os.link(state, tmp_path / "second-name")
    assert store.find(shape) is None                 # a second hard link
    os.unlink(tmp_path / "second-name")
    meta = Path(store.directory(shape.key()), "meta.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "offset": 999}))
    assert store.find(shape) is None                 # the offset is past the end
    meta.write_text("not json")
    assert store.find(shape) is None


@needs_root
def test_stale_templates_go_and_remove_image_takes_all_of_one_image(
        tmp_path, kernel_spec, fixed) -> None:
    store = TemplateStore(str(tmp_path / "state"))
    image = opted_in(fixed.image("kernel"))
    spec = kernel_spec()[0]
    old = snapshot.shape_of(spec, image, VERSIONS)
    bigger = snapshot.shape_of(kernel_spec("ram=2G")[0], image, VERSIONS)
    other_image = snapshot.shape_of(spec, dataclasses.replace(image, name="other"), VERSIONS)
    new_qemu = snapshot.shape_of(spec, image, (7002023, VERSIONS[1]))
    for shape in (old, bigger, other_image):
        publish(store, shape)
    # A new QEMU: the image's templates of the old QEMU are stale, whatever their shape.
    assert sorted(store.remove_stale(new_qemu)) == sorted([old.key(), bigger.key()])
    assert store.find(other_image) is not None
    publish(store, new_qemu)
    assert store.remove_image("testguest") == [new_qemu.key()]
    assert [key for key, _ in store.entries()] == [other_image.key()]
    assert store.bytes_used() == 200


@needs_root
def test_a_failure_is_remembered_for_retry_after_seconds(tmp_path, kernel_spec, fixed,
                                                         monkeypatch) -> None:
    store = TemplateStore(str(tmp_path / "state"))
    shape = snapshot.shape_of(kernel_spec()[0], opted_in(fixed.image("kernel")), VERSIONS)
    with store.locked(shape.key()):
        store.record_failure(shape.key(), "QEMU could not load the saved state (failed)",
                             "testguest")
    assert store.recent_failure(shape.key(), 600) == \
        "QEMU could not load the saved state (failed)"
    import time
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 601)
    assert store.recent_failure(shape.key(), 600) is None
    shutil.rmtree(store.root)
    assert store.recent_failure(shape.key(), 600) is None


@needs_root
def test_the_least_recently_used_templates_go_past_keep_and_failed_ones_with_their_image(
        tmp_path, kernel_spec, fixed) -> None:
    store = TemplateStore(str(tmp_path / "state"))
    image = opted_in(fixed.image("kernel"))
    shapes = [snapshot.shape_of(kernel_spec(f"vcpus={n}")[0], image, VERSIONS)
              for n in (1, 2, 3)]
    for age, shape in enumerate(shapes):
        publish(store, shape)
        meta = os.path.join(store.directory(shape.key()), "meta.json")
        os.utime(meta, (1000 + age, 1000 + age))
    store.mark_used(store.find(shapes[0]))          # the oldest, used just now
    assert store.prune(2) == [shapes[1].key()]
    assert {key for key, _ in store.entries()} == {shapes[0].key(), shapes[2].key()}
    failed = snapshot.shape_of(kernel_spec("vcpus=4")[0], image, VERSIONS)
    with store.locked(failed.key()):
        store.record_failure(failed.key(), "did not reach its snapshot point", "testguest")
    assert sorted(store.remove_image("testguest")) == sorted(
        [shapes[0].key(), shapes[2].key(), failed.key()])


def test_guests_on_huge_pages_boot(kernel_spec, fixed, make_config) -> None:
    spec = dataclasses.replace(kernel_spec()[0], hugepage_kib=2048)
    assert "huge pages" in snapshot.not_eligible(spec, opted_in(fixed.image("kernel")),
                                                 make_config({}))


def test_a_definition_that_cannot_be_used_is_a_hypervisor_error(kernel_spec) -> None:
    own = domain_xml(kernel_spec()[0])
    with pytest.raises(HypervisorError, match="cannot be used"):
        snapshot.restored_domain_xml("<domain><devices>", own)
    with pytest.raises(HypervisorError, match="cannot be used"):
        snapshot.restored_domain_xml(
            "<domain><devices><filesystem/></devices></domain>", own)


@needs_root
def test_the_reaper_destroys_template_guests_of_killed_builds_only(tmp_path, make_config):
    from vtorque.vm import restore
    config = make_config({"state_dir": str(tmp_path / "state")})
    store = TemplateStore(config.state_dir)
    building, killed = "a" * 32, "b" * 32

    class FakeHost:
        destroyed: list = []

        def template_domains(self):
            return [("vtorque-template-building", building),
                    ("vtorque-template-killed", killed),
                    ("vtorque-template-odd", "../../etc")]

        def destroy(self, name):
            self.destroyed.append(name)

    with store.locked(building):
        gone = restore.reap_templates(FakeHost(), config)
    assert gone == ["vtorque-template-killed", "vtorque-template-odd"]
    assert FakeHost.destroyed == gone
