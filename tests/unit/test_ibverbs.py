"""RDMA for guests against fake sysfs trees (tests/standins/fake_sysfs.py): discovery,
virtual function assignment (all or nothing, never twice, also across racing processes),
release and reclaim, GUIDs and partition keys, the transport decision and the guests'
environment."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.standins import fake_sysfs
from vtorque.errors import NodeError, RequestError, ResourceError
from vtorque.ibverbs import guids, pool, sysfs, transport


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "sysroot"
    path.mkdir()
    return path


@pytest.fixture
def ib_config(make_config: Any, root: Path, tmp_path: Path) -> Any:
    return make_config({"ibverbs": {"sysfs_root": str(root)},
                        "batch": {"shared_state_dir": str(tmp_path / "shared")}})


# --- discovery ------------------------------------------------------------------------

def test_connectx_node_with_8_vfs(root: Path) -> None:
    vfs = fake_sysfs.connectx_node(root)
    [hca] = sysfs.discover(str(root))        # VFs bound on the host are not adapters
    assert (hca.name, hca.pci, hca.hca_type, hca.fw_ver) == \
        ("mlx5_0", "0000:03:00.0", "MT4118", "14.28.2006")
    assert hca.node_guid == "ec0d:9a03:0044:368c"
    [port] = hca.ports
    assert (port.number, port.state, port.phys_state, port.link_layer) == \
        (1, "ACTIVE", "LinkUp", "InfiniBand")
    assert port.rate == "100 Gb/sec (4X EDR)"
    assert port.pkeys == ("0xffff", "0x800b")          # the empty 0x0000 entry is not a key
    assert (hca.sriov_total, hca.sriov_enabled) == (16, 8)
    assert [vf.pci for vf in hca.vfs] == vfs
    assert vfs[-1] == "0000:03:01.0"                   # VF 7: function 8 under ARI
    assert [vf.index for vf in hca.vfs] == list(range(8))
    assert {vf.driver for vf in hca.vfs} == {"mlx5_core"}
    assert hca.ofed_sriov and hca.netdevs == ("ib0",)
    assert sysfs.usable([hca]) == [hca]


def test_node_without_sriov_has_nothing_to_give(root: Path) -> None:
    fake_sysfs.node_without_sriov(root)
    [hca] = sysfs.discover(str(root))
    assert hca.sriov_total == 0 and hca.vfs == ()
    assert sysfs.usable([hca]) == []


def test_roce_port_and_config_device_filter(root: Path) -> None:
    fake_sysfs.roce_node(root)
    fake_sysfs.add_hca(root, "mlx5_4", bus=0x81, state="1: DOWN")
    hcas = sysfs.discover(str(root))
    assert [(h.name, h.link_layer, h.active) for h in hcas] == \
        [("mlx5_0", "Ethernet", True), ("mlx5_4", "InfiniBand", False)]
    assert [h.name for h in sysfs.usable(hcas)] == ["mlx5_0"]     # a port must be up
    assert sysfs.usable(hcas, ("mlx5_9",)) == []


def test_a_node_without_rdma(root: Path) -> None:
    assert sysfs.discover(str(root)) == []


# --- assignment -----------------------------------------------------------------------

def test_assign_sets_guids_and_follow_policy_release_sets_down(root: Path, ib_config: Any
                                                               ) -> None:
    vfs = fake_sysfs.connectx_node(root)
    got = pool.assign(ib_config, "12.srv", [0, 1, 2])
    assert [a.pci for a in got] == vfs[:3] and [a.rank for a in got] == [0, 1, 2]
    for a in got:
        assert fake_sysfs.ofed_attr(root, 3, a.vf, "policy") == "Follow"
        assert fake_sysfs.ofed_attr(root, 3, a.vf, "node") == \
            guids.node_guid("02:76", "12.srv", a.rank)
        assert fake_sysfs.ofed_attr(root, 3, a.vf, "port") == \
            guids.port_guid("02:76", "12.srv", a.rank)
    assert pool.assigned_jobs(ib_config) == {"12.srv"}
    ledger = Path(ib_config.state_dir) / ".vf-assignments.json"
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600
    assert sorted(json.loads(ledger.read_text())) == vfs[:3]

    assert pool.release(ib_config, "12.srv") == vfs[:3]
    assert {fake_sysfs.ofed_attr(root, 3, i, "policy") for i in range(3)} == {"Down"}
    assert pool.assignments(ib_config) == []
    assert pool.release(ib_config, "12.srv") == []     # idempotent


def test_jobs_never_share_a_function_and_exhaustion_changes_nothing(root: Path,
                                                                     ib_config: Any) -> None:
    fake_sysfs.connectx_node(root)
    first = pool.assign(ib_config, "1.srv", [0, 1, 2, 3, 4])
    before = pool.assignments(ib_config)
    with pytest.raises(ResourceError, match="4 needed, 3 of 8 free"):
        pool.assign(ib_config, "2.srv", [0, 1, 2, 3])
    assert pool.assignments(ib_config) == before        # all or nothing
    second = pool.assign(ib_config, "2.srv", [0, 1, 2])
    assert not {a.pci for a in first} & {a.pci for a in second}
    # ResourceError is a node fault: the prologue requeues the job.
    assert issubclass(ResourceError, NodeError)


def test_a_rerun_of_the_same_job_replaces_its_old_entries(root: Path, ib_config: Any) -> None:
    fake_sysfs.connectx_node(root)
    pool.assign(ib_config, "7.srv", [0, 1])
    again = pool.assign(ib_config, "7.srv", [0, 1])
    assert [a.rank for a in pool.assignments(ib_config)] == [0, 1]
    assert {a.job_id for a in again} == {"7.srv"}


def test_functions_bound_to_vfio_by_someone_else_are_left_alone(root: Path,
                                                                  ib_config: Any) -> None:
    vfs = fake_sysfs.connectx_node(root)
    fake_sysfs.bind(root, vfs[0], "vfio-pci")
    [a] = pool.assign(ib_config, "3.srv", [0])
    assert a.pci == vfs[1]


def test_functions_spread_over_adapters(root: Path, ib_config: Any) -> None:
    first = fake_sysfs.add_hca(root, "mlx5_0", bus=3, num_vfs=2)
    second = fake_sysfs.add_hca(root, "mlx5_1", bus=4, num_vfs=2, netdev="ib1")
    got = pool.assign(ib_config, "4.srv", [0, 1])
    assert [a.pci for a in got] == [first[0], second[0]]


def test_roce_functions_get_no_guids(root: Path, ib_config: Any) -> None:
    vfs = fake_sysfs.roce_node(root)
    [a] = pool.assign(ib_config, "5.srv", [0])
    assert a.pci == vfs[0] and a.link_layer == "Ethernet"
    assert pool.release(ib_config, "5.srv") == [vfs[0]]


def test_upstream_driver_sets_guids_through_ip_link(root: Path, ib_config: Any,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_sysfs.add_hca(root, ofed=False)
    calls = tmp_path / "ip-calls"
    fake_ip = tmp_path / "ip"
    fake_ip.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake_ip.chmod(0o755)
    monkeypatch.setattr(pool, "IP", str(fake_ip))
    [a] = pool.assign(ib_config, "6.srv", [3])
    pool.release(ib_config, "6.srv")
    assert calls.read_text().splitlines() == [
        f"link set dev ib0 vf 0 node_guid {a.node_guid} port_guid {a.port_guid} state auto",
        "link set dev ib0 vf 0 state disable"]


def test_a_failed_guid_write_assigns_nothing(root: Path, ib_config: Any) -> None:
    fake_sysfs.connectx_node(root)
    # The second function's GUID file is missing: the driver refused it.
    os.unlink(root / fake_sysfs.PCI_ROOT / "0000:03:00.0" / "sriov" / "1" / "port")
    with pytest.raises(NodeError, match="sriov/1/port"):
        pool.assign(ib_config, "8.srv", [0, 1])
    assert pool.assignments(ib_config) == []
    assert fake_sysfs.ofed_attr(root, 3, 0, "policy") == "Down"     # rolled back


def test_sysfs_writes_never_follow_a_planted_link(root: Path, ib_config: Any,
                                                  tmp_path: Path) -> None:
    fake_sysfs.connectx_node(root)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    policy = root / fake_sysfs.PCI_ROOT / "0000:03:00.0" / "sriov" / "0" / "policy"
    policy.unlink()
    policy.symlink_to(victim)
    with pytest.raises(NodeError):
        pool.assign(ib_config, "9.srv", [0])
    assert victim.read_text() == "precious\n"


def test_a_corrupt_ledger_is_reported_not_guessed(root: Path, ib_config: Any) -> None:
    fake_sysfs.connectx_node(root)
    Path(ib_config.state_dir).mkdir(parents=True)
    (Path(ib_config.state_dir) / ".vf-assignments.json").write_text('{"0000:03:00.1": 5}')
    with pytest.raises(NodeError, match="corrupt"):
        pool.assign(ib_config, "10.srv", [0])


def _racer(config_path: str, job: str, queue: Any) -> None:
    from vtorque import config as config_mod
    cfg = config_mod.load(config_path)
    try:
        queue.put((job, [a.pci for a in pool.assign(cfg, job, [0, 1])]))
    except ResourceError:
        queue.put((job, None))


def test_racing_processes_never_get_the_same_function(root: Path, ib_config: Any,
                                                      tmp_path: Path) -> None:
    import yaml
    fake_sysfs.connectx_node(root)
    config_path = tmp_path / "race.yaml"
    config_path.write_text(yaml.safe_dump({
        "image_pool": ib_config.image_pool, "state_dir": ib_config.state_dir,
        "ibverbs": {"sysfs_root": str(root)}}))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(str(config_path), f"{n}.srv", queue))
              for n in range(6)]
    for racer in racers:
        racer.start()
    results = dict(queue.get(timeout=60) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
    won = [pcis for pcis in results.values() if pcis]
    assert len(won) == 4                                   # 8 functions, 2 per job
    assigned = [pci for pcis in won for pci in pcis]
    assert len(assigned) == len(set(assigned)) == 8
    assert {a.pci for a in pool.assignments(ib_config)} == set(assigned)


def test_reaper_reclaims_functions_of_a_dead_job(root: Path, ib_config: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from vtorque.admin import reaper
    from vtorque.epilogue import teardown
    vfs = fake_sysfs.connectx_node(root)
    pool.assign(ib_config, "11.srv", [0, 1])        # its prologue died before the job dir
    assert teardown.has_local_state("11.srv", ib_config)

    from tests.standins.empty_node import ForgetfulServer as Server
    from tests.standins.empty_node import NoHost
    from vtorque.vm import host, lifecycle
    monkeypatch.setattr(host, "Host", NoHost)
    monkeypatch.setattr(lifecycle, "Host", NoHost)
    verdicts = reaper.reap(ib_config, Server())
    assert [(v.job_id, v.action) for v in verdicts] == [("11.srv", "reaped")]
    assert pool.assignments(ib_config) == []
    assert {fake_sysfs.ofed_attr(root, 3, i, "policy") for i in range(2)} == {"Down"}
    assert not teardown.has_local_state("11.srv", ib_config)
    assert vfs


# --- GUIDs and partition keys -----------------------------------------------------------

def test_guids_follow_from_job_and_rank() -> None:
    port = guids.port_guid("02:76", "12.srv", 3)
    assert port == guids.port_guid("02:76", "12.srv", 3)
    assert port.startswith("02:76:") and port.endswith(":00:03") and len(port) == 23
    assert guids.node_guid("02:76", "12.srv", 3).endswith(":80:03")
    assert guids.port_guid("02:76", "123.srv", 3) != port          # prefix-sharing ids
    with pytest.raises(ValueError):
        guids.port_guid("02:76", "1", 0x8000)
    assert guids.as_hex("02:76:00:00:00:00:00:01") == "0x0276000000000001"


def test_partition_file_lists_the_jobs_guests_as_full_members() -> None:
    text = guids.partition_conf("12[3].srv", 0x1005, ["02:76:00:00:00:00:00:00",
                                                      "02:76:00:00:00:00:00:01"])
    assert text == ("vtorque_12_3__srv=0x1005, ipoib : 0x0276000000000000=full, "
                    "0x0276000000000001=full ;\n")


def test_pkeys_one_per_job_cluster_wide(make_config: Any, tmp_path: Path) -> None:
    parts = tmp_path / "partitions"
    cfg = make_config({"ibverbs": {"pkey_first": 0x1000, "pkey_last": 0x1001,
                                   "partitions_dir": str(parts)},
                       "batch": {"shared_state_dir": str(tmp_path / "shared")}})
    assert pool.allocate_pkey(cfg, "1.srv", 2) == 0x1000
    assert pool.allocate_pkey(cfg, "1.srv", 2) == 0x1000       # the other nodes find it
    assert pool.allocate_pkey(cfg, "2.srv", 1) == 0x1001
    with pytest.raises(ResourceError, match="no free partition key"):
        pool.allocate_pkey(cfg, "3.srv", 1)
    assert (parts / "vtorque_1_srv.conf").read_text().startswith("vtorque_1_srv=0x1000")
    pool.release_pkey(cfg, "1.srv")
    assert not (parts / "vtorque_1_srv.conf").exists()
    assert pool.pkey_jobs(cfg) == {"2.srv"}
    assert pool.allocate_pkey(cfg, "3.srv", 1) == 0x1000


def test_no_pkeys_unless_configured(ib_config: Any) -> None:
    assert pool.allocate_pkey(ib_config, "1.srv", 2) is None
    assert pool.pkey_jobs(ib_config) == set()


# --- transport and environment ---------------------------------------------------------

def test_transport_choice(root: Path, make_config: Any) -> None:
    fake_sysfs.connectx_node(root)
    hcas = sysfs.discover(str(root))
    both = make_config({"network": {"mode": "network"},
                        "ibverbs": {"soft_roce": True}}).ibverbs
    assert transport.choose(False, hcas, both) is None
    assert transport.choose(True, hcas, both) == transport.SRIOV
    assert transport.choose(True, [], both) == transport.SOFT_ROCE
    strict = make_config().ibverbs
    with pytest.raises(RequestError, match="no InfiniBand or RoCE adapter.*ibverbs.soft_roce"):
        transport.choose(True, [], strict)
    fake_sysfs_root = root.parent / "nosriov"
    fake_sysfs_root.mkdir()
    fake_sysfs.node_without_sriov(fake_sysfs_root)
    with pytest.raises(RequestError, match=r"no active port with SR-IOV functions \(mlx5_0\)"):
        transport.choose(True, sysfs.discover(str(fake_sysfs_root)), strict)


def test_guest_environment() -> None:
    assert transport.job_environment(None, "ucx") == ()
    ucx = dict(transport.job_environment(transport.SRIOV, "ucx", 0x1005))
    assert ucx == {"VTORQUE_RDMA": "sriov", "OMPI_MCA_pml": "ucx", "OMPI_MCA_osc": "ucx",
                   "OMPI_MCA_btl": "^openib", "UCX_IB_PKEY": "0x9005"}
    verbs = dict(transport.job_environment(transport.SRIOV, "verbs"))
    assert verbs["OMPI_MCA_btl"] == "openib,vader,self" and "UCX_IB_PKEY" not in verbs
    soft = dict(transport.job_environment(transport.SOFT_ROCE, "ucx"))
    assert soft["VTORQUE_RDMA_DEVICE"] == "rxe0" and soft["OMPI_MCA_pml"] == "cm"
    assert soft["OMPI_MCA_mtl_ofi_provider_include"] == "verbs;ofi_rxm"
    assert int(soft["FI_UNIVERSE_SIZE"]) <= 32


# --- what admins see, what guests get ---------------------------------------------------

def test_ib_list_shows_functions_free_and_held(root: Path, ib_config: Any, capsys: Any,
                                               tmp_path: Path) -> None:
    import yaml
    from vtorque.admin import cli
    vfs = fake_sysfs.connectx_node(root)
    fake_sysfs.bind(root, vfs[7], "vfio-pci")
    pool.assign(ib_config, "12.srv", [0])
    path = tmp_path / "ib.yaml"
    path.write_text(yaml.safe_dump({"image_pool": ib_config.image_pool,
                                    "state_dir": ib_config.state_dir,
                                    "ibverbs": {"sysfs_root": str(root)}}))
    assert cli.main(["--config", str(path), "ib", "list"]) == 0
    out = capsys.readouterr().out
    assert "mlx5_0\t0000:03:00.0\tMT4118 fw 14.28.2006\tport 1 ACTIVE InfiniBand" in out
    assert "8 of 16 functions enabled, 6 free, used for guests" in out
    assert f"vf0\t{vfs[0]}\tmlx5_core\tjob 12.srv rank 0" in out
    assert f"vf1\t{vfs[1]}\tmlx5_core\tfree" in out
    assert f"vf7\t{vfs[7]}\tvfio-pci\tbusy: bound to vfio-pci outside vtorque" in out
    assert "Soft-RoCE fallback: not allowed" in out


def test_passthrough_guest_xml(make_specs: Any) -> None:
    from xml.etree import ElementTree
    from vtorque.vm.render import domain_xml
    cfg_over = {"machine_type": "pc"}
    [plain] = make_specs("linux", **cfg_over)
    assert plain.machine == "pc" and plain.hostdevs == ()
    assert "<hostdev" not in domain_xml(plain) and "<locked/>" not in domain_xml(plain)
    from dataclasses import replace
    spec = replace(plain, hostdevs=("0000:03:01.0",), machine="q35", memory_mib=1024)
    root = ElementTree.fromstring(domain_xml(spec))
    [address] = root.findall("./devices/hostdev[@type='pci'][@managed='yes']/source/address")
    assert address.attrib == {"domain": "0x0000", "bus": "0x03", "slot": "0x01",
                              "function": "0x0"}
    assert root.find("./devices/hostdev/driver").get("name") == "vfio"
    assert root.find("./memoryBacking/locked") is not None
    assert root.find("./memtune/hard_limit").text == "2048"        # RAM + QEMU's 1 GiB
    with pytest.raises(ValueError, match="not a PCI address"):
        domain_xml(replace(spec, hostdevs=("0000:03:01.0'/><evil",)))


def test_specs_get_functions_q35_and_the_soft_roce_cmdline(make_config: Any, fixed: Any
                                                           ) -> None:
    from vtorque.journal import JobPaths
    from vtorque.request import parse_request
    from vtorque.vm.spec import build_guest_specs
    cfg = make_config({"machine_type": "pc", "network": {"mode": "network"}})
    req = parse_request("vms_per_node=2,vrdma=yes", cfg)
    paths = JobPaths.for_job("12.srv", cfg.state_dir, cfg.ramdisk_dir)
    common = dict(paths=paths, request=req, image=fixed.image("kernel"), config=cfg,
                  domain_type="qemu", first_rank=2, tokens=["a", "b"], qemu_uid=1,
                  qemu_gid=1)
    specs = build_guest_specs(**common, rdma="sriov", functions={3: "0000:03:00.2"})
    assert [(s.rank, s.hostdevs, s.machine) for s in specs] == \
        [(2, (), "pc"), (3, ("0000:03:00.2",), "q35")]
    soft = build_guest_specs(**common, rdma="soft-roce")
    assert all("vtorque.rdma=rxe" in s.cmdline for s in soft)
    assert all("vtorque.rdma" not in s.cmdline for s in specs)


def test_cloud_images_set_soft_roce_up_before_the_ready_line(make_specs: Any) -> None:
    import yaml as yaml_mod
    from dataclasses import replace
    from vtorque.prologue.guests import soft_roce_setup
    from vtorque.vm.seed import SeedExtras, seed_documents
    [spec] = make_specs("linux", network={"mode": "network"})
    spec = replace(spec, rdma="soft-roce")
    env = transport.job_environment("soft-roce", "ucx")
    setup, device = soft_roce_setup("soft-roce")
    assert soft_roce_setup("sriov") == soft_roce_setup(None) == ((), None)
    docs = seed_documents(spec, SeedExtras(env=env, rdma_setup=setup, rdma_device=device))
    user = yaml_mod.safe_load(docs["user-data"].split("\n", 1)[1])
    assert user["runcmd"][:2] == [list(c) for c in transport.RXE_COMMANDS]
    assert "vtorque-ready" in user["runcmd"][2][2]
    assert "rdma link show rxe0/1" in user["runcmd"][2][2]
    files = {f["path"]: f["content"] for f in user["write_files"]}
    assert files["/etc/security/limits.d/vtorque-rdma.conf"] == "* - memlock unlimited\n"
    assert "SetEnv VTORQUE_RDMA=soft-roce VTORQUE_RDMA_DEVICE=rxe0" in \
        files["/etc/ssh/sshd_config.d/vtorque.conf"]
    assert "VTORQUE_RDMA_DEVICE=rxe0\n" in docs["vtorque-env"]


def test_config_checks_of_the_ibverbs_section(make_config: Any) -> None:
    from vtorque.errors import ConfigError
    cfg = make_config({"ibverbs": {"pkey_first": "0x1000", "pkey_last": 0x10ff,
                                   "devices": ["mlx5_0"]}})
    assert (cfg.ibverbs.pkey_first, cfg.ibverbs.pkey_last) == (0x1000, 0x10ff)
    assert cfg.ibverbs.devices == ("mlx5_0",)
    for bad, key in (({"pkey_first": 0x2000, "pkey_last": 0x1000}, "ibverbs.pkey_first"),
                     ({"pkey_first": 0x8000, "pkey_last": 0x8001}, "ibverbs.pkey_first"),
                     ({"soft_roce": True}, "ibverbs.soft_roce"),
                     ({"guid_prefix": "zz:01"}, "ibverbs.guid_prefix"),
                     ({"devices": "mlx5_0"}, "ibverbs.devices")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            make_config({"ibverbs": bad})
    with pytest.raises(ConfigError, match=r"defaults\.vrdma: true, but"):
        make_config({"defaults": {"vrdma": True}, "ibverbs": {"sriov": False}})


def test_vrdma_refused_at_submit_where_the_site_offers_none(make_config: Any) -> None:
    from vtorque.request import parse_request
    cfg = make_config({"ibverbs": {"sriov": False}})
    with pytest.raises(RequestError, match="vrdma=yes: this cluster gives guests no RDMA"):
        parse_request("vrdma=yes", cfg)
    assert parse_request("vrdma=no", cfg).vrdma is False
    assert parse_request("vrdma=enabled", make_config()).vrdma is True


def test_vrdma_refused_for_osv_images(make_config: Any, fixed: Any) -> None:
    from vtorque.errors import ImageError
    from vtorque.request import check_image_matches, parse_request
    cfg = make_config({"network": {"mode": "network"}})
    req = parse_request("vrdma=yes", cfg)
    with pytest.raises(ImageError, match="OSv unikernel, which has no RDMA"):
        check_image_matches(req, fixed.image("osv"), cfg)
    check_image_matches(req, fixed.image("kernel"), cfg)


def test_rendered_domains_are_valid_libvirt_xml(make_specs: Any, tmp_path: Path) -> None:
    """libvirt's own schema (virt-xml-validate) accepts the guests, passthrough included."""
    import shutil
    import subprocess
    from dataclasses import replace
    from vtorque.vm.render import domain_xml
    validate = shutil.which("virt-xml-validate")
    assert validate and shutil.which("xmllint"), "scripts/setup installs libvirt-clients " \
        "and libxml2-utils"
    [plain] = make_specs("linux", network={"mode": "network"})
    for name, spec in (("plain", plain),
                       ("passthrough", replace(plain, hostdevs=("0000:03:00.1", "0000:81:01.7"),
                                               machine="q35", rdma="sriov"))):
        path = tmp_path / f"{name}.xml"
        path.write_text(domain_xml(spec))
        done = subprocess.run([validate, str(path), "domain"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, (name, done.stdout + done.stderr)
