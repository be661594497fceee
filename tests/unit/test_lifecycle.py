"""Unit tests of vtorque.vm.lifecycle (up, list, down) against libvirt's test driver
(faults items 3, 4, 9 and 13).

libvirt's test driver keeps its domains per connection: a second libvirt.open() of the same
driver file starts from the file again. up(), list_guests() and down() each open a Host, so
these tests hand them one shared Host per test (its close() is a no-op until the test ends).
No QEMU runs: the console check of vm/readiness is stubbed, node facts are fixed, and guests
use a kernel-kind image (no overlay, so no qemu-img) unless a test asks for a scratch disk.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import libvirt
import pytest
import yaml

from vtorque import node
from vtorque.admin import cli
from vtorque import config as config_mod
from vtorque.errors import (
    SavedStateError,
    CommandError,
    GuestTimeout,
    HypervisorError,
    ImageError,
    NodeError,
    RequestError,
    TeardownError,
    Unsupported,
    VtorqueError,
)
from vtorque.journal import Journal
from vtorque.node import NodeFacts
from vtorque.request import parse_request
from vtorque.vm import identity, lifecycle, readiness, restore
from vtorque.vm.host import Host
from vtorque.vm.render import domain_xml
from vtorque.vm.spec import METADATA_NS
from vtorque.vm.template_store import Template, TemplateStore

QEMU_UID = pwd.getpwnam("libvirt-qemu").pw_uid if "libvirt-qemu" in {
    p.pw_name for p in pwd.getpwall()} else None
QEMU_GID = grp.getgrnam("kvm").gr_gid if "kvm" in {g.gr_name for g in grp.getgrall()} else None
needs_qemu_ids = pytest.mark.skipif(QEMU_UID is None or QEMU_GID is None or os.geteuid() != 0,
                                    reason="needs root and the libvirt-qemu user / kvm group")
pytestmark = needs_qemu_ids


class SharedHost(Host):
    """One test-driver connection for the whole test: closing it is deferred."""

    def close(self) -> None:
        pass

    def really_close(self) -> None:
        super().close()


class Env:
    def __init__(self, config, host: SharedHost, config_path: Path, state: Path):
        self.config = config
        self.host = host
        self.config_path = config_path
        self.state = state

    def request(self, text: str = "img=testguest"):
        return parse_request(text, self.config)

    def paths(self, job_id: str):
        return lifecycle.paths_for(job_id, self.config)

    def domains(self, job_id: str | None = None) -> list[str]:
        return [d.name for d in self.host.tagged_domains(job_id)]

    def assert_nothing_left(self, job_id: str) -> None:
        paths = self.paths(job_id)
        assert self.host.tagged_domains(job_id) == []
        assert not os.path.lexists(paths.job_dir)
        assert not os.path.lexists(paths.ramdisk_dir)
        assert not os.path.lexists(paths.lock)


@pytest.fixture
def env(tmp_path: Path, pool_dir: Path, test_uri: str, add_kernel_image, monkeypatch):
    add_kernel_image(pool_dir)
    add_kernel_image(pool_dir, "rockyguest", distro="rocky")
    state = tmp_path / "state"
    data = {
        "image_pool": str(pool_dir),
        "state_dir": str(state),
        "ramdisk_dir": str(tmp_path / "shm"),
        "min_free_space": 0,
        "hypervisor": "qemu",
        "libvirt_uri": test_uri,
        "defaults": {"ram": "64M"},
        "timeouts": {"teardown": 1},  # how long down() waits for a stuck guest
        "log_file": str(tmp_path / "log" / "vtorque.log"),
        "batch": {"shared_state_dir": str(tmp_path / "shared")},
    }
    config_path = tmp_path / "vtorque.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = config_mod.load(str(config_path))
    shared = SharedHost(test_uri, retries=1)

    def host_factory(uri: str, *args, **kwargs) -> Host:
        assert uri == test_uri
        return shared

    monkeypatch.setattr(lifecycle, "Host", host_factory)
    monkeypatch.setattr(readiness, "console_has", lambda _path, _line: True)
    # What QEMU's identity may open is tried as that identity (a child process under its
    # uid); here every (identity, kind, path) asked is recorded, and refused when a test
    # lists the path in env.unusable.
    checked: list = []
    unusable: set[str] = set()

    def check_as(qemu, paths):
        checked.extend((qemu, kind, path) for kind, path in paths)
        return [i for i, (_kind, path) in enumerate(paths) if path in unusable]
    monkeypatch.setattr(identity, "unusable", check_as)
    monkeypatch.setattr(node, "facts", lambda: NodeFacts("node1", 16, 64 << 10))
    env = Env(config, shared, config_path, state)
    env.checked, env.unusable = checked, unusable
    yield env
    shared.really_close()


# --- up ------------------------------------------------------------------------------------

def test_up_starts_tagged_guests(env: Env) -> None:
    result = lifecycle.up("12", env.request("img=testguest,vms_per_node=2,vcpus=2"), env.config)
    paths = env.paths("12")
    assert result.job_id == "12"
    assert [g.rank for g in result.guests] == [0, 1]
    assert [g.hostname for g in result.guests] == ["vt12-0", "vt12-1"]
    assert all(g.state == "running" and g.ready_seconds is not None for g in result.guests)
    assert env.domains("12") == [f"vtorque-{paths.key}-0", f"vtorque-{paths.key}-1"]
    for guest in result.guests:
        dom = env.host._conn.lookupByName(guest.name)
        assert 'id="12"' in dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        assert dom.info()[3] == 2  # vcpus
    st = os.lstat(paths.job_dir)
    assert stat.S_IMODE(st.st_mode) == 0o710
    assert (st.st_uid, st.st_gid) == (0, QEMU_GID)
    for guest in result.guests:
        seed = Path(paths.job_dir) / f"{guest.name}.seed.iso"
        st = seed.stat()
        # The seed holds the guest's private host key: its QEMU's identity alone reads it.
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (QEMU_UID, QEMU_GID, 0o400)


def test_up_writes_the_journal(env: Env) -> None:
    result = lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    journal = Journal(env.paths("12").journal)
    events = [e["event"] for e in journal.entries()]
    assert events[0] == "job-start" and events[-1] == "job-ready"
    assert sorted(events[1:-1]) == ["guest-started"] * 2 + ["guest-starting"] * 2
    assert sorted(journal.domain_names()) == sorted(g.name for g in result.guests)
    started = [e for e in journal.entries() if e["event"] == "guest-started"]
    for entry in started:
        assert entry["uuid"] == env.host._conn.lookupByName(entry["domain"]).UUIDString()
        assert entry["files"] == [os.path.join(env.paths("12").job_dir,
                                               entry["domain"] + ".seed.iso")]
    assert os.stat(journal.path).st_mode & 0o777 == 0o600


def test_up_honours_first_rank(env: Env) -> None:
    result = lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config,
                          first_rank=2)
    assert [g.rank for g in result.guests] == [2, 3]
    assert [d.rank for d in env.host.tagged_domains("12")] == [2, 3]


def test_up_again_replaces_leftovers(env: Env) -> None:
    first = lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    uuids = {d.uuid for d in env.host.tagged_domains("12")}
    second = lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    assert [g.name for g in second.guests] == [g.name for g in first.guests]
    assert len(env.host.tagged_domains("12")) == 2
    assert not uuids & {d.uuid for d in env.host.tagged_domains("12")}


def test_up_with_scratch_disk(env: Env) -> None:
    result = lifecycle.up("12", env.request("img=testguest,vms_per_node=2,disk=1G"), env.config)
    paths = env.paths("12")
    scratch = Path(paths.job_dir) / f"{result.guests[0].name}.data.raw"
    st = scratch.stat()
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 16 << 20     # sparse
    with scratch.open("rb") as handle:
        handle.seek(1080)
        assert handle.read(2) == b"\x53\xef"                          # an ext4 superblock
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (QEMU_UID, QEMU_GID, 0o600)
    assert not (Path(paths.job_dir) / f"{result.guests[1].name}.data.raw").exists()
    lifecycle.down("12", env.config)
    env.assert_nothing_left("12")


def test_up_ramdisk_scratch_without_overlay(env: Env) -> None:
    lifecycle.up("12", env.request("img=testguest,disk=1G,fs_type=ramdisk"), env.config)
    assert os.path.isdir(env.paths("12").ramdisk_dir)


def test_up_picks_the_image_by_distro(env: Env) -> None:
    lifecycle.up("12", env.request("distro=rocky"), env.config)
    [dom] = env.host.tagged_domains("12")
    xml = env.host._conn.lookupByName(dom.name).XMLDesc(0)
    assert "rockyguest.vmlinuz" in xml


# --- refusals before anything is made -------------------------------------------------------

def test_unknown_image_creates_nothing(env: Env) -> None:
    with pytest.raises(ImageError, match="not in the authorized image pool"):
        lifecycle.up("12", env.request("img=nosuch"), env.config)
    assert env.domains() == []
    assert not os.path.lexists(env.paths("12").job_dir)


def test_image_distro_mismatch_creates_nothing(env: Env) -> None:
    with pytest.raises(ImageError, match="distro"):
        lifecycle.up("12", env.request("img=testguest,distro=rocky"), env.config)
    assert env.domains() == []
    assert not os.path.lexists(env.paths("12").job_dir)


def test_request_larger_than_the_node_creates_nothing(env: Env, monkeypatch) -> None:
    monkeypatch.setattr(node, "facts", lambda: NodeFacts("small", 2, 64 << 10))
    with pytest.raises(RequestError) as info:
        lifecycle.up("12", env.request("img=testguest,vcpus=2"), env.config)
    assert info.value.key == "vcpus"
    assert env.domains() == []
    assert not os.path.lexists(env.paths("12").job_dir)


# --- failures half-way roll back -------------------------------------------------------------

def test_failed_start_rolls_back(env: Env, monkeypatch) -> None:
    real_start = env.host.start_transient
    started = []

    def start_some(xml: str) -> str:
        if "<name>" in xml and "-1</name>" in xml:
            raise HypervisorError("libvirt refused to start the guest: injected")
        uuid = real_start(xml)
        started.append(uuid)
        return uuid

    monkeypatch.setattr(env.host, "start_transient", start_some)
    with pytest.raises(HypervisorError, match="injected"):
        lifecycle.up("12", env.request("img=testguest,vms_per_node=3"), env.config)
    assert len(started) == 2  # ranks 0 and 2 did start ...
    env.assert_nothing_left("12")  # ... and are gone again


def test_guest_that_never_answers_rolls_back(env: Env, monkeypatch) -> None:
    data = yaml.safe_load(env.config_path.read_text())
    data["timeouts"]["guest_ready"] = 0.3
    env.config_path.write_text(yaml.safe_dump(data))
    config = config_mod.load(str(env.config_path))
    monkeypatch.setattr(readiness, "console_has", lambda _path, _line: False)
    with pytest.raises(GuestTimeout, match="2 guest\\(s\\) did not answer within 0.3 s"):
        lifecycle.up("12", parse_request("img=testguest,vms_per_node=2", config), config)
    env.assert_nothing_left("12")


def test_guest_that_stops_rolls_back(env: Env, monkeypatch) -> None:
    monkeypatch.setattr(readiness, "console_has", lambda _path, _line: False)
    real_start = env.host.start_transient

    def start_then_die(xml: str) -> str:
        uuid = real_start(xml)
        env.host._conn.lookupByUUIDString(uuid).destroy()
        return uuid

    monkeypatch.setattr(env.host, "start_transient", start_then_die)
    with pytest.raises(HypervisorError, match="stopped before it was ready"):
        lifecycle.up("12", env.request("img=testguest"), env.config)
    env.assert_nothing_left("12")


def fail_with_stuck_rollback(env: Env, monkeypatch, error: VtorqueError) -> VtorqueError:
    """up() whose guests never answer (`error`) and whose rollback cannot destroy them."""
    def never_ready(*args, **kwargs):
        raise error

    def stuck(name: str) -> None:
        raise HypervisorError(f"cannot destroy guest {name}: stuck")

    monkeypatch.setattr(lifecycle.readiness, "wait_ready", never_ready)
    monkeypatch.setattr(env.host, "destroy", stuck)
    with pytest.raises(VtorqueError) as info:
        lifecycle.up("12", env.request("img=testguest"), env.config)
    return info.value


def test_failed_rollback_keeps_both_messages(env: Env, monkeypatch) -> None:
    error = fail_with_stuck_rollback(env, monkeypatch, HypervisorError("no answer"))
    assert isinstance(error, HypervisorError)
    assert str(error).startswith("no answer; rollback also failed: teardown of job 12 ")
    assert "stuck" in str(error)


def test_failed_rollback_after_a_command_error(env: Env, monkeypatch) -> None:
    error = fail_with_stuck_rollback(
        env, monkeypatch, CommandError(["/usr/bin/qemu-img", "create"], 1, "", "disk full"))
    assert "disk full" in str(error) and "rollback also failed" in str(error)


# --- down ----------------------------------------------------------------------------------

def test_down_removes_everything_and_is_idempotent(env: Env) -> None:
    result = lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    destroyed = lifecycle.down("12", env.config)
    assert sorted(destroyed) == sorted(g.name for g in result.guests)
    env.assert_nothing_left("12")
    assert lifecycle.down("12", env.config) == []
    env.assert_nothing_left("12")


def test_down_reports_what_it_could_not_remove(env: Env, monkeypatch) -> None:
    result = lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    stuck = result.guests[0].name
    real_destroy = env.host.destroy

    def destroy(name: str) -> None:
        if name == stuck:
            raise HypervisorError(f"cannot destroy guest {name}: stuck")
        real_destroy(name)

    monkeypatch.setattr(env.host, "destroy", destroy)
    with pytest.raises(TeardownError) as info:
        lifecycle.down("12", env.config)
    assert info.value.failures[0] == f"cannot destroy guest {stuck}: stuck"
    assert f"guest {stuck} still exists after destroy" in info.value.failures
    # It kept going past the stuck guest, and kept the journal for a later teardown.
    assert env.domains("12") == [stuck]
    assert Journal(env.paths("12").journal).domain_names()
    monkeypatch.setattr(env.host, "destroy", real_destroy)
    assert stuck in lifecycle.down("12", env.config)
    env.assert_nothing_left("12")


def test_down_of_a_job_that_never_ran(env: Env) -> None:
    assert lifecycle.down("77", env.config) == []
    env.assert_nothing_left("77")


def test_down_finds_guests_by_tag_without_the_journal(env: Env) -> None:
    lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    os.unlink(env.paths("12").journal)
    assert len(lifecycle.down("12", env.config)) == 2
    env.assert_nothing_left("12")


def test_down_destroys_only_domains_tagged_for_the_job(env: Env) -> None:
    """A journal names domains, but only libvirt's tag says whose a domain is: a domain
    the journal names without the job's tag (someone else's, of the same name) stays."""
    paths = env.paths("12")
    os.makedirs(paths.job_dir)
    name = f"vtorque-{paths.key}-0"
    Journal(paths.journal).record("guest-starting", domain=name, rank=0)
    env.host.start_transient(f"""<domain type="test"><name>{name}</name>
      <memory unit="MiB">64</memory><vcpu>1</vcpu><os><type arch="x86_64">hvm</type></os>
    </domain>""")
    try:
        assert lifecycle.down("12", env.config) == []
        assert env.host.state(name) is not None
        assert not os.path.lexists(paths.job_dir)
    finally:
        env.host.destroy(name)


def test_down_of_12_leaves_123_alone(env: Env) -> None:
    jobs = ("12", "123", "12[1]", "12[10]")
    for job in jobs:
        lifecycle.up(job, env.request("img=testguest,vms_per_node=2"), env.config)
    before = {job: env.domains(job) for job in jobs}
    lifecycle.down("12", env.config)
    env.assert_nothing_left("12")
    for job in jobs[1:]:
        assert env.domains(job) == before[job]
        paths = env.paths(job)
        assert os.path.isdir(paths.job_dir)
        assert len(Journal(paths.journal).domain_names()) == 2
    lifecycle.down("12[1]", env.config)
    assert env.domains("12[10]") == before["12[10]"]
    assert env.domains("123") == before["123"]


def test_list_guests(env: Env) -> None:
    lifecycle.up("12", env.request("img=testguest,vms_per_node=2"), env.config)
    lifecycle.up("123", env.request("img=testguest"), env.config)
    everything = lifecycle.list_guests(env.config)
    assert [(g.job_id, g.rank, g.state) for g in everything] == [
        ("12", 0, "running"), ("12", 1, "running"), ("123", 0, "running")]
    assert [g.job_id for g in lifecycle.list_guests(env.config, "12")] == ["12", "12"]
    assert lifecycle.list_guests(env.config, "1") == []


# --- through the command line --------------------------------------------------------------

def test_cli_bad_request_is_one_line_and_creates_nothing(env: Env, capsys) -> None:
    code = cli.main(["--config", str(env.config_path), "vm", "up", "--job", "1",
                     "--request", "vcpus=0"])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("vtorque: ")
    assert "vcpus" in err and "minimum 1" in err
    assert "Traceback" not in err
    assert not env.state.exists()
    assert env.domains() == []


@pytest.mark.parametrize("request_text, key", [("vcpu=2", "vcpu"), ("img=../x", "img"),
                                               ("ram=1T", "ram")])
def test_cli_bad_requests_name_the_key(env: Env, capsys, request_text: str, key: str) -> None:
    code = cli.main(["--config", str(env.config_path), "vm", "up", "--job", "1",
                     "--request", request_text])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{key}" in err and err.count("\n") == 1
    assert not env.state.exists()


def test_cli_up_list_down(env: Env, capsys) -> None:
    base = ["--config", str(env.config_path), "vm"]
    assert cli.main(base + ["up", "--job", "12", "--request", "img=testguest",
                            "--request", "vms_per_node=2"]) == 0
    out = capsys.readouterr().out
    assert "job 12: 2 guest(s) up" in out
    assert cli.main(base + ["list", "--job", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "JOB\tRANK\tDOMAIN\tSTATE"
    assert [line.split("\t")[1] for line in lines[1:]] == ["0", "1"]
    assert cli.main(base + ["down", "--job", "12"]) == 0
    assert capsys.readouterr().out == "job 12: 2 guest(s) destroyed, job files removed\n"
    assert cli.main(base + ["down", "--job", "12"]) == 0
    assert capsys.readouterr().out == "job 12: 0 guest(s) destroyed, job files removed\n"
    env.assert_nothing_left("12")


def test_cli_refuses_a_bad_job_id(env: Env, capsys) -> None:
    assert cli.main(["--config", str(env.config_path), "vm", "down", "--job", "../x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vtorque: --job: '../x' is not a job id") and err.count("\n") == 1
    assert not env.state.exists() or not any(env.state.rglob("*x*"))


# --- RDMA: virtual functions go with the guests --------------------------------------------

def _with_sysfs(env: Env, root: Path):
    from tests.standins import fake_sysfs
    vfs = fake_sysfs.add_hca(root, num_vfs=3, host_vf_hcas=0)
    data = yaml.safe_load(env.config_path.read_text())
    data["ibverbs"] = {"sysfs_root": str(root)}
    env.config_path.write_text(yaml.safe_dump(data))
    return config_mod.load(str(env.config_path)), vfs


def test_guests_get_a_function_each_and_teardown_releases_them(env: Env,
                                                                tmp_path: Path) -> None:
    from vtorque.epilogue.teardown import clean_node
    from vtorque.ibverbs import pool
    from vtorque.prologue.guests import bring_up
    config, vfs = _with_sysfs(env, tmp_path / "sys")
    result, _ = bring_up("12", env.request("img=testguest,vms_per_node=2,vrdma=yes"), config,
                         user=None)
    assert result.rdma == "sriov"
    held = {a.rank: a.pci for a in pool.assignments(config)}
    assert held == {0: vfs[0], 1: vfs[1]}
    for guest in result.guests:
        xml = env.host._conn.lookupByName(guest.name).XMLDesc(0)
        bus, rest = held[guest.rank].split(":")[1:]
        slot, function = rest.split(".")
        assert f"bus='0x{bus}' slot='0x{slot}' function='0x{function}'" in xml
        assert "<locked/>" in xml and "q35" in xml
    clean_node("12", config)
    env.assert_nothing_left("12")
    assert pool.assignments(config) == []


def test_too_few_functions_requeue_and_leave_nothing(env: Env, tmp_path: Path) -> None:
    from vtorque.errors import ResourceError
    from vtorque.ibverbs import pool
    from vtorque.prologue.guests import bring_up
    config, _ = _with_sysfs(env, tmp_path / "sys")
    with pytest.raises(ResourceError, match="4 needed, 3 of 3 free"):
        bring_up("13", env.request("img=testguest,vms_per_node=4,vrdma=yes"), config,
                 user=None)
    env.assert_nothing_left("13")
    assert pool.assignments(config) == []


# --- QEMU's identity: the job owner ----------------------------------------------------

@pytest.fixture
def owner():
    """A job owner for these tests: an account every Debian system has (not root)."""
    return identity.of_owner("nobody")


def share(origin: str, path: str, readonly: bool = False):
    from vtorque.vm.shares import ShareSpec
    return ShareSpec(f"vtshare-{origin}", path, path, readonly, origin)


def test_qemu_runs_as_the_owner_and_owns_its_files(env: Env, owner, tmp_path: Path) -> None:
    plan = lifecycle.check("12", env.request("img=testguest,disk=1G"), env.config)
    work = tmp_path / "work"
    work.mkdir()
    result = lifecycle.start(plan, env.config, owner=owner,
                             shares=(share("workdir", str(work)),))
    paths = env.paths("12")
    dom = env.host._conn.lookupByName(result.guests[0].name)
    xml = dom.XMLDesc(0)
    assert f"<label>+{owner.uid}:+{owner.gid}</label>" in xml
    assert f"<source dir='{work}'/>" in xml or f'<source dir="{work}"/>' in xml
    st = os.lstat(paths.job_dir)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, owner.gid, 0o710)
    for suffix, mode in ((".seed.iso", 0o400), (".data.raw", 0o600)):
        st = (Path(paths.job_dir) / f"{result.guests[0].name}{suffix}").stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (owner.uid, owner.gid,
                                                                     mode)
    # /data's root directory is the owner's in the file system the node made.
    import subprocess
    data = Path(paths.job_dir) / f"{result.guests[0].name}.data.raw"
    root_inode = subprocess.run(["/sbin/debugfs", "-R", "stat /", str(data)],
                                capture_output=True, text=True, timeout=30).stdout
    fields = root_inode.split()
    assert fields[fields.index("User:") + 1] == str(owner.uid)
    assert fields[fields.index("Group:") + 1] == str(owner.gid)
    # Asked as the owner: libvirt's domain directory, the image's files, the state
    # directory, the share.
    asked = {(kind, path) for qemu, kind, path in env.checked if qemu == owner}
    assert (identity.ENTER, identity.LIBVIRT_QEMU_DIR) in asked
    assert (identity.LIST, str(work)) in asked
    assert {k for k, p in asked if p.endswith("testguest.vmlinuz")} == {identity.READ}
    start = next(e for e in Journal(paths.journal).entries() if e["event"] == "job-start")
    assert start["qemu_uid"] == owner.uid and start["shares"] == [str(work)]
    lifecycle.down("12", env.config)
    env.assert_nothing_left("12")


def test_a_working_directory_the_owner_cannot_read_is_the_users_fault(env: Env, owner,
                                                                     tmp_path: Path) -> None:
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    env.unusable.add("/work/secret")
    with pytest.raises(Unsupported, match="working directory '/work/secret' is not readable"):
        lifecycle.start(plan, env.config, owner=owner,
                        shares=(share("workdir", "/work/secret"),))
    env.assert_nothing_left("12")


def test_a_home_or_site_share_the_owner_cannot_read_is_left_out(env: Env, owner,
                                                               tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    env.unusable.update({"/home/nowhere", str(site)})
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    kept = tmp_path / "kept"
    kept.mkdir()
    result = lifecycle.start(plan, env.config, owner=owner, shares=(
        share("home", "/home/nowhere"), share("site", str(site)), share("site", str(kept))))
    xml = env.host._conn.lookupByName(result.guests[0].name).XMLDesc(0)
    assert str(kept) in xml and str(site) + "'" not in xml and "/home/nowhere" not in xml
    assert "vtshare0" in xml          # tags numbered afresh


def test_a_site_share_missing_on_the_node_is_the_nodes_fault(env: Env, owner) -> None:
    env.unusable.add("/no/such/share")
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    with pytest.raises(NodeError, match="share /no/such/share .*batch.shares.* not a "
                                        "directory"):
        lifecycle.start(plan, env.config, owner=owner,
                        shares=(share("site", "/no/such/share"),))
    env.assert_nothing_left("12")


def test_libvirts_domain_directory_must_be_reachable(env: Env, owner) -> None:
    env.unusable.add(identity.LIBVIRT_QEMU_DIR)
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    with pytest.raises(NodeError, match="cannot enter /var/lib/libvirt/qemu .*chmod o\\+x"):
        lifecycle.start(plan, env.config, owner=owner)
    env.assert_nothing_left("12")


def test_kvm_needs_a_dev_kvm_the_owner_can_use(env: Env, owner, monkeypatch) -> None:
    monkeypatch.setattr(node, "domain_type", lambda _hv: "kvm")
    monkeypatch.setattr(identity, "kvm_problem", lambda _q: "/dev/kvm (mode 0660) is not "
                        "usable")
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    with pytest.raises(NodeError, match="/dev/kvm"):
        lifecycle.start(plan, env.config, owner=owner)
    env.assert_nothing_left("12")


def test_without_an_owner_no_share_is_mounted(env: Env, tmp_path: Path) -> None:
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    result = lifecycle.start(plan, env.config, shares=(share("site", str(tmp_path)),))
    xml = env.host._conn.lookupByName(result.guests[0].name).XMLDesc(0)
    assert "<filesystem" not in xml.replace("hostroot", "")
    assert f"+{QEMU_UID}:+{QEMU_GID}" in xml


def test_osv_guests_take_no_data_disk_and_need_their_kernel(env: Env, pool_dir: Path,
                                                           monkeypatch) -> None:
    import hashlib
    disk = pool_dir / "osvimg.raw"
    disk.write_bytes(b"\x00" * 4096)
    disk.chmod(0o644)
    digest = hashlib.sha256(disk.read_bytes()).hexdigest()
    (pool_dir / "osvimg.yaml").write_text(
        f"name: osvimg\nkind: osv\ndistro: osv\narch: x86_64\n"
        f"disk: {{file: osvimg.raw, format: raw, sha256: '{digest}'}}\n")
    networked = config_mod.load(str(env.config_path))
    import dataclasses
    networked = dataclasses.replace(networked, network=dataclasses.replace(
        networked.network, mode="network"))
    with pytest.raises(Unsupported, match="OSv mounts no data disk"):
        lifecycle.check("12", parse_request("img=osvimg,disk=1G", networked), networked)
    with pytest.raises(ImageError, match="needs kernel and cmdline"):
        lifecycle.check("12", parse_request("img=osvimg", networked), networked)


def test_an_unreadable_outer_share_leaves_the_inner_ones(env: Env, owner,
                                                       tmp_path: Path) -> None:
    """A site /home the owner may only traverse cannot be a share root; the owner's own
    home inside it is then shared by itself."""
    homes = tmp_path / "homes"
    (homes / "u").mkdir(parents=True)
    env.unusable.add(str(homes))
    plan = lifecycle.check("12", env.request("img=testguest"), env.config)
    from vtorque.vm.shares import plan_shares
    asked = plan_shares(workdir=None, home=str(homes / "u"), site=((str(homes), False),))
    result = lifecycle.start(plan, env.config, owner=owner, shares=asked)
    xml = env.host._conn.lookupByName(result.guests[0].name).XMLDesc(0)
    assert f"dir='{homes}/u'" in xml or f'dir="{homes}/u"' in xml
    assert f"dir='{homes}'" not in xml and f'dir="{homes}"' not in xml


# --- snapshot starts: whatever goes wrong, the guests boot -----------------------------------

@pytest.fixture
def snapshot_image(env: Env, pool_dir: Path, add_kernel_image) -> str:
    """An image that opts in to snapshot starts."""
    add_kernel_image(pool_dir, "snapguest", extra="snapshot: true\n")
    return "snapguest"


def journal_starts(env: Env, job_id: str) -> list:
    return [e.get("start") for e in Journal(env.paths(job_id).journal).entries()
            if e.get("event") == "guest-started"]


def test_a_template_that_cannot_be_built_leaves_nothing_and_the_guests_boot(
        env: Env, snapshot_image: str) -> None:
    # The test driver saves in its own format, not libvirt's QEMU save image: the build
    # fails after a real start, wait and save, at the header check.
    result = lifecycle.up("12", env.request(f"img={snapshot_image},vms_per_node=2"),
                          env.config)
    assert [g.started for g in result.guests] == ["boot", "boot"]
    assert journal_starts(env, "12") == ["boot", "boot"]
    assert "building its template failed" in result.snapshot_note
    assert "not a libvirt save image" in result.snapshot_note
    log = Path(env.config.log_file).read_text()
    assert "guests boot instead of starting from a template" in log
    assert [d.name for d in env.host._conn.listAllDomains()
            if "template" in d.name()] == []
    store = TemplateStore(env.config.state_dir)
    [(key, meta)] = store.entries()
    assert meta is None and not os.path.exists(os.path.join(store.directory(key), "state"))
    # Within snapshots.retry_after the shape boots without another try.
    calls = []
    original = restore._build
    restore._build = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        again = lifecycle.up("13", env.request(f"img={snapshot_image}"), env.config)
    finally:
        restore._build = original
    assert calls == [] and "failed recently" in again.snapshot_note
    lifecycle.down("12", env.config)
    lifecycle.down("13", env.config)
    env.assert_nothing_left("12")


def fake_template(env: Env) -> Template:
    store = TemplateStore(env.config.state_dir)
    store.prepare()
    directory = store.directory("k" * 32)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    state = os.path.join(directory, "state")
    Path(state).write_bytes(b"x" * 64)
    os.chmod(state, 0o600)
    Path(directory, "meta.json").write_text("{}")
    return Template("k" * 32, state, "<domain/>", 8, 64, "snapguest", os.stat(state).st_ino)


def same_shape(monkeypatch, template: Template) -> None:
    """Every guest is of the fake template's shape."""
    class Shape:
        @staticmethod
        def key() -> str:
            return template.key
    monkeypatch.setattr(restore.snapshot, "shape_of", lambda *a: Shape)
    monkeypatch.setattr(restore, "template_for", lambda *a: template)


def test_a_template_qemu_cannot_load_is_dropped_and_the_guest_boots(
        env: Env, snapshot_image: str, monkeypatch) -> None:
    template = fake_template(env)
    same_shape(monkeypatch, template)

    def refuse(*args, **kwargs):
        raise SavedStateError("QEMU could not load the saved state (failed)")
    monkeypatch.setattr(restore, "start_guest", refuse)
    result = lifecycle.up("12", env.request(f"img={snapshot_image}"), env.config)
    assert [g.started for g in result.guests] == ["boot"]
    assert "restore from the node's template failed" in result.snapshot_note
    assert "restoring from template" in Path(env.config.log_file).read_text()
    store = TemplateStore(env.config.state_dir)
    assert not os.path.exists(template.state)
    assert "could not load" in store.recent_failure(template.key, 600)
    lifecycle.down("12", env.config)
    env.assert_nothing_left("12")


def test_a_restore_that_fails_for_the_guests_own_reason_keeps_the_template(
        env: Env, snapshot_image: str, monkeypatch) -> None:
    template = fake_template(env)
    same_shape(monkeypatch, template)

    def refuse(*args, **kwargs):
        raise HypervisorError("cannot hot-plug a device into guest x: no free slot")
    monkeypatch.setattr(restore, "start_guest", refuse)
    result = lifecycle.up("12", env.request(f"img={snapshot_image}"), env.config)
    assert [g.started for g in result.guests] == ["boot"]
    assert os.path.exists(template.state)
    assert TemplateStore(env.config.state_dir).recent_failure(template.key, 600) is None
    lifecycle.down("12", env.config)


def test_a_guest_of_another_shape_than_the_template_boots(
        env: Env, snapshot_image: str, monkeypatch) -> None:
    template = fake_template(env)               # its key matches no real shape
    monkeypatch.setattr(restore, "template_for", lambda *a: template)
    monkeypatch.setattr(restore, "start_guest", lambda *a: pytest.fail("restored"))
    result = lifecycle.up("12", env.request(f"img={snapshot_image}"), env.config)
    assert [g.started for g in result.guests] == ["boot"]
    assert os.path.exists(template.state)
    lifecycle.down("12", env.config)


def test_a_restored_guest_gets_its_job_words_in_its_seed_and_is_recorded_so(
        env: Env, snapshot_image: str, monkeypatch) -> None:
    template = fake_template(env)
    same_shape(monkeypatch, template)
    seeds = {}

    def restored(spec, tmpl, host, timeout):
        assert tmpl is template
        import pycdlib
        iso = pycdlib.PyCdlib()
        iso.open(spec.seed.path)
        names = [c.rock_ridge.name().decode() for c in iso.list_children(rr_path="/")
                 if c.rock_ridge]
        iso.close()
        seeds[spec.name] = names
        return host.start_transient(domain_xml(spec))
    monkeypatch.setattr(restore, "start_guest", restored)
    result = lifecycle.up("12", env.request(f"img={snapshot_image}"), env.config)
    assert [g.started for g in result.guests] == ["snapshot"] and result.restored == 1
    assert result.snapshot_note is None
    assert journal_starts(env, "12") == ["snapshot"]
    [names] = seeds.values()
    assert {"vtorque-cmdline", "vtorque-entropy", "vtorque-time"} <= set(names)


def test_with_snapshots_off_no_template_is_tried(env: Env, snapshot_image: str,
                                                 monkeypatch) -> None:
    import dataclasses
    off = dataclasses.replace(env.config, snapshots=dataclasses.replace(
        env.config.snapshots, enabled=False))
    monkeypatch.setattr(restore, "_build", lambda *a, **k: pytest.fail("built a template"))
    result = lifecycle.up("12", parse_request(f"img={snapshot_image}", off), off)
    assert [g.started for g in result.guests] == ["boot"] and result.snapshot_note is None
    assert not os.path.exists(TemplateStore(off.state_dir).root)
    lifecycle.down("12", off)


# --- huge pages and NUMA ----------------------------------------------------------------------

@pytest.fixture
def numa_env(env: Env, tmp_path: Path) -> Env:
    """The env on a two-node machine (cores 0-3, 4-7) with 1 GiB pages: 2 free on node 0,
    4 on node 1."""
    import dataclasses

    from tests.standins import fake_numa
    root = tmp_path / "sysroot"
    fake_numa.add_nodes(root, ["0-3", "4-7"])
    fake_numa.set_pool(root, 1 << 20, [(2, 2), (4, 4)])
    env.root = root
    env.config = dataclasses.replace(env.config, numa=dataclasses.replace(
        env.config.numa, sysfs_root=str(root)))
    return env


def test_a_pool_too_small_is_refused_before_anything_is_made(numa_env: Env) -> None:
    from vtorque.errors import ResourceError
    from vtorque.vm import hugepage_reservations
    request = numa_env.request("img=testguest,vcpus=2,ram=3G,hugepages=1G")
    with pytest.raises(ResourceError, match="needs 3 pages of 1 GiB on NUMA node 0 for 1 "
                                            "guest\\(s\\) x 3G, node \\S+ has 2 free there"):
        lifecycle.check("12", request, numa_env.config, job_cores=(0, 1))
    assert hugepage_reservations.holding_jobs(numa_env.config) == set()
    numa_env.assert_nothing_left("12")
    lifecycle.check("12", request, numa_env.config, job_cores=(4, 5))


def test_guests_on_huge_pages_and_their_nodes_leave_nothing(numa_env: Env) -> None:
    from vtorque.vm import hugepage_reservations
    request = numa_env.request("img=testguest,vcpus=2,ram=2G,hugepages=1G,vcpu_pinning=yes")
    plan = lifecycle.check("12", request, numa_env.config, job_cores=(5, 6))
    lifecycle.start(plan, numa_env.config)
    [dom] = numa_env.host.tagged_domains("12")
    xml = numa_env.host._conn.lookupByName(dom.name).XMLDesc(0)
    assert "<page size='1048576' unit='KiB'/>" in xml
    assert "<memory mode='strict' nodeset='1'/>" in xml
    assert "<vcpupin vcpu='1' cpuset='6'/>" in xml
    table = hugepage_reservations.ledger(numa_env.config).read()
    assert table["12"]["pages"] == {"1": 2} and table["12"]["started"] is True
    lifecycle.down("12", numa_env.config)
    numa_env.assert_nothing_left("12")
    assert hugepage_reservations.holding_jobs(numa_env.config) == set()


def test_a_failed_start_gives_the_pages_back(numa_env: Env, monkeypatch) -> None:
    from vtorque.vm import hugepage_reservations

    def boom(self, xml: str) -> str:
        assert hugepage_reservations.pending(numa_env.config) == {1 << 20: 2}
        raise HypervisorError("libvirt said no")
    monkeypatch.setattr(SharedHost, "start_transient", boom)
    request = numa_env.request("img=testguest,vcpus=2,ram=2G,hugepages=1G")
    plan = lifecycle.check("12", request, numa_env.config, job_cores=(0, 1))
    with pytest.raises(HypervisorError, match="libvirt said no"):
        lifecycle.start(plan, numa_env.config)
    assert hugepage_reservations.holding_jobs(numa_env.config) == set()
    numa_env.assert_nothing_left("12")


def test_a_second_job_checked_before_the_first_started_is_refused_at_start(
        numa_env: Env) -> None:
    """Both pass check() (nothing is held by then); start() counts again, under the
    ledger's lock, and refuses the second before making anything of its own."""
    from vtorque.errors import ResourceError
    request = numa_env.request("img=testguest,vcpus=2,ram=3G,hugepages=1G")
    first = lifecycle.check("12", request, numa_env.config, job_cores=(4, 5))
    second = lifecycle.check("13", request, numa_env.config, job_cores=(6, 7))
    lifecycle.start(first, numa_env.config)
    # The first's QEMU would have taken its pages by now: the kernel's count shows them.
    from tests.standins import fake_numa
    fake_numa.set_pool(numa_env.root, 1 << 20, [(2, 2), (4, 1)])
    with pytest.raises(ResourceError, match="on NUMA node 1 .* has 1 free there$"):
        lifecycle.start(second, numa_env.config)
    numa_env.assert_nothing_left("13")
    lifecycle.down("12", numa_env.config)
