"""Huge pages against fake sysfs trees (tests/standins/fake_numa.py): the node's pools,
the refusal lines, and the counting of pages held for guests being started (never the
same free pages to two jobs, also across racing processes; teardown leaves nothing)."""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.standins import fake_numa
from vtorque.errors import NodeError, RequestError, ResourceError
from vtorque.request import parse_request
from vtorque.vm import HUGEPAGE_LEDGER
from vtorque.vm import hugepage_reservations as reservations
from vtorque.vm.hugepages import NodePool, Pool, page_text, read_pools
from vtorque.vm.numa import guest_placements, read_topology

GIB_KIB = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A two-node machine (cores 0-3 and 4-7) with 4 pages of 1 GiB free on each node."""
    path = tmp_path / "sysroot"
    fake_numa.add_nodes(path, ["0-3", "4-7"])
    fake_numa.set_pool(path, 2048, [(0, 0), (0, 0)])
    fake_numa.set_pool(path, GIB_KIB, [(4, 4), (4, 4)])
    return path


@pytest.fixture
def cfg(make_config: Any, root: Path) -> Any:
    return make_config({"numa": {"sysfs_root": str(root)}, "node_name": "vtnode1"})


def _plan(cfg: Any, root: Path, text: str, cores: tuple[int, ...] | None):
    request = parse_request(text, cfg)
    return request, guest_placements(cfg, request, cores, read_topology(str(root)))


# --- the request ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, mib", [("yes", 2), ("no", 0), ("2M", 2), ("1G", 1024),
                                       ("1024M", 1024), ("2048K", 2), ("enabled", 2)])
def test_the_hugepages_key(make_config: Any, text: str, mib: int) -> None:
    request = parse_request(f"ram=4G,hugepages={text}", make_config())
    assert request.hugepage_mib == mib
    assert parse_request(request.to_text(), make_config()) == request


@pytest.mark.parametrize("text", ["4M", "1T", "huge", "0M"])
def test_page_sizes_the_cpu_has_not(make_config: Any, text: str) -> None:
    with pytest.raises(RequestError, match=r"expected yes, no or a huge page size: 2M or 1G"):
        parse_request(f"hugepages={text}", make_config())


def test_ram_must_be_whole_pages(make_config: Any) -> None:
    with pytest.raises(RequestError) as info:
        parse_request("ram=1536M,hugepages=1G", make_config())
    assert str(info.value) == ("-vm ram=1536M is not a whole number of 1G huge pages "
                               "(hugepages=1G): ask for a multiple of 1G, or another page "
                               "size")
    site = make_config({"defaults": {"hugepages": "1G", "ram": "2G"}})
    assert parse_request("vcpus=2", site).hugepage_mib == 1024
    with pytest.raises(RequestError, match=r"\(hugepages=1G \(the site's default\)\)"):
        parse_request("ram=2050M", site)
    assert parse_request("ram=2050M,hugepages=no", site).hugepage_mib == 0
    with pytest.raises(RequestError, match="not a whole number of 2M huge pages"):
        parse_request("ram=2051M,hugepages=yes", site)


def test_the_site_default_is_checked_on_load(make_config: Any) -> None:
    from vtorque.errors import ConfigError
    assert make_config({"defaults": {"hugepages": True}}).defaults.hugepages == 2
    assert make_config({"defaults": {"hugepages": False}}).defaults.hugepages == 0
    with pytest.raises(ConfigError, match="defaults.hugepages: expected yes, no or a huge "
                                          "page size"):
        make_config({"defaults": {"hugepages": "3M"}})
    with pytest.raises(ConfigError, match="defaults.ram: not a whole number of "
                                          "defaults.hugepages pages"):
        make_config({"defaults": {"hugepages": "1G", "ram": "1536M"}})


# --- the pools -----------------------------------------------------------------------------

def test_pools_per_size_and_node(root: Path) -> None:
    fake_numa.set_pool(root, 2048, [(512, 100), (256, 256)], reserved=20)
    pools = read_pools(str(root))
    assert pools == (Pool(2048, 768, 356, 20, (NodePool(0, 512, 100), NodePool(1, 256, 256))),
                     Pool(GIB_KIB, 8, 8, 0, (NodePool(0, 4, 4), NodePool(1, 4, 4))))
    assert pools[0].available == 336 and pools[0].on_node(2) is None
    assert (page_text(2048), page_text(GIB_KIB)) == ("2 MiB", "1 GiB")
    assert read_pools(str(root / "none")) == ()
    (root / fake_numa.POOLS_DIR / "hugepages-2048kB" / "free_hugepages").write_text("x\n")
    with pytest.raises(NodeError, match="hugepages-2048kB/free_hugepages: expected a number"):
        read_pools(str(root))


def test_this_machines_pools_read() -> None:
    assert all(p.total >= p.free >= 0 for p in read_pools("/"))


# --- refusals ------------------------------------------------------------------------------

def test_a_node_short_of_pages_refuses_with_the_numbers(cfg: Any, root: Path) -> None:
    fake_numa.set_pool(root, GIB_KIB, [(4, 3), (4, 4)])
    request, placements = _plan(cfg, root, "vcpus=2,vms_per_node=2,ram=4G,hugepages=1G",
                                (0, 1, 2, 3))
    with pytest.raises(ResourceError) as info:
        reservations.check(cfg, "1.srv", request, placements, "vtnode1")
    assert str(info.value) == ("-vm hugepages=1G needs 8 pages of 1 GiB on NUMA node 0 for "
                               "2 guest(s) x 4G, node vtnode1 has 3 free there (its pool "
                               "holds 4 in all)")


def test_a_guest_split_over_nodes_takes_pages_of_both(cfg: Any, root: Path) -> None:
    request, placements = _plan(cfg, root, "vcpus=4,ram=6G,hugepages=1G", (2, 3, 4, 5))
    assert reservations.demand(request, placements) == {"0": 3, "1": 3}
    reservations.check(cfg, "1.srv", request, placements, "vtnode1")
    request, placements = _plan(cfg, root, "vcpus=4,ram=10G,hugepages=1G", (2, 3, 4, 5))
    with pytest.raises(ResourceError, match="needs 5 pages of 1 GiB on NUMA node 0 for 1 "
                                            "guest\\(s\\) x 10G split over NUMA nodes, node "
                                            "vtnode1 has 4 free there"):
        reservations.check(cfg, "1.srv", request, placements, "vtnode1")


def test_unbound_guests_count_against_the_whole_pool(cfg: Any, root: Path) -> None:
    fake_numa.set_pool(root, GIB_KIB, [(4, 4), (4, 4)], reserved=3)
    request, placements = _plan(cfg, root, "ram=6G,hugepages=1G", None)
    assert reservations.demand(request, placements) == {reservations.ANY_NODE: 6}
    with pytest.raises(ResourceError) as info:
        reservations.check(cfg, "1.srv", request, placements, "vtnode1")
    assert str(info.value) == ("-vm hugepages=1G needs 6 pages of 1 GiB for 1 guest(s) x 6G, "
                               "node vtnode1 has 5 free (3 of its 8 free are promised to "
                               "mappings)")


def test_a_node_without_the_pool(cfg: Any, root: Path) -> None:
    import shutil
    shutil.rmtree(root / fake_numa.POOLS_DIR / f"hugepages-{GIB_KIB}kB")
    request, placements = _plan(cfg, root, "ram=2G,hugepages=1G", (0,))
    with pytest.raises(ResourceError, match="^-vm hugepages=1G: node vtnode1 has no pool of "
                                            "1 GiB huge pages$"):
        reservations.check(cfg, "1.srv", request, placements, "vtnode1")


def test_no_hugepages_asked_reads_nothing(make_config: Any, tmp_path: Path) -> None:
    cfg = make_config({"numa": {"sysfs_root": str(tmp_path / "absent")}})
    request = parse_request("ram=65M", cfg)
    reservations.check(cfg, "1.srv", request, guest_placements(cfg, request, None, None), "n")
    reservations.reserve(cfg, "1.srv", request, guest_placements(cfg, request, None, None),
                         "n")
    assert not os.path.exists(os.path.join(cfg.state_dir, HUGEPAGE_LEDGER))


# --- counting ------------------------------------------------------------------------------

def test_pages_held_for_a_starting_job_are_not_free_for_another(cfg: Any, root: Path) -> None:
    request, placements = _plan(cfg, root, "vcpus=2,ram=3G,hugepages=1G", (0, 1))
    reservations.reserve(cfg, "1.srv", request, placements, "vtnode1")
    path = os.path.join(cfg.state_dir, HUGEPAGE_LEDGER)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # The kernel still shows 4 free on node 0: QEMU of job 1 has not allocated yet.
    with pytest.raises(ResourceError) as info:
        reservations.check(cfg, "2.srv", request, placements, "vtnode1")
    assert str(info.value) == ("-vm hugepages=1G needs 3 pages of 1 GiB on NUMA node 0 for 1 "
                               "guest(s) x 3G, node vtnode1 has 1 free there (4 in the "
                               "kernel's free count, 3 held for other jobs' guests being "
                               "started)")
    # Another node's pages are another matter; and the job itself is not its own rival.
    other, elsewhere = _plan(cfg, root, "vcpus=2,ram=3G,hugepages=1G", (4, 5))
    reservations.check(cfg, "2.srv", other, elsewhere, "vtnode1")
    reservations.check(cfg, "1.srv", request, placements, "vtnode1")
    # Job 1's QEMU allocated its pages: the kernel's count shows it, the entry stops counting.
    fake_numa.set_pool(root, GIB_KIB, [(4, 1), (4, 4)])
    reservations.mark_started(cfg, "1.srv")
    assert reservations.pending(cfg) == {}
    with pytest.raises(ResourceError, match="node vtnode1 has 1 free there$"):
        reservations.check(cfg, "2.srv", request, placements, "vtnode1")
    assert reservations.holding_jobs(cfg) == {"1.srv"}
    reservations.release(cfg, "1.srv")
    assert reservations.holding_jobs(cfg) == set()
    reservations.release(cfg, "never.srv")           # nothing held: fine


def test_a_refused_reservation_holds_nothing(cfg: Any, root: Path) -> None:
    request, placements = _plan(cfg, root, "vcpus=2,ram=5G,hugepages=1G", (0, 1))
    with pytest.raises(ResourceError):
        reservations.reserve(cfg, "1.srv", request, placements, "vtnode1")
    assert reservations.holding_jobs(cfg) == set()


def test_a_rerun_of_the_same_job_replaces_its_entry(cfg: Any, root: Path) -> None:
    request, placements = _plan(cfg, root, "vcpus=2,ram=4G,hugepages=1G", (0, 1))
    reservations.reserve(cfg, "1.srv", request, placements, "vtnode1")
    reservations.reserve(cfg, "1.srv", request, placements, "vtnode1")
    assert reservations.pending(cfg) == {GIB_KIB: 4}


def test_a_corrupt_ledger_is_reported_not_guessed(cfg: Any, root: Path) -> None:
    os.makedirs(cfg.state_dir, exist_ok=True)
    path = os.path.join(cfg.state_dir, HUGEPAGE_LEDGER)
    with open(path, "w") as handle:
        json.dump({"1.srv": {"page_kib": 2048, "pages": {"x": 1}, "started": False,
                             "since": 0}}, handle)
    os.chmod(path, 0o600)
    request, placements = _plan(cfg, root, "ram=2G,hugepages=1G", (0,))
    with pytest.raises(NodeError, match="huge page reservations .* are corrupt"):
        reservations.check(cfg, "2.srv", request, placements, "vtnode1")


def _racer(config_path: str, root: str, job_id: str, queue: Any) -> None:
    from vtorque import config as config_mod
    cfg = config_mod.load(config_path)
    request = parse_request("vcpus=2,ram=2G,hugepages=1G", cfg)
    placements = guest_placements(cfg, request, (0, 1), read_topology(root))
    try:
        reservations.reserve(cfg, job_id, request, placements, "vtnode1")
        queue.put((job_id, True))
    except ResourceError:
        queue.put((job_id, False))


def test_racing_jobs_never_get_the_same_pages(cfg: Any, root: Path, tmp_path: Path) -> None:
    """Six jobs of 2 pages each race for node 0's 4 free pages: exactly two win."""
    import yaml
    config_path = tmp_path / "race.yaml"
    config_path.write_text(yaml.safe_dump({
        "image_pool": cfg.image_pool, "state_dir": cfg.state_dir,
        "numa": {"sysfs_root": str(root)}}))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(str(config_path), str(root), f"{n}.srv", queue))
              for n in range(6)]
    for racer in racers:
        racer.start()
    results = dict(queue.get(timeout=60) for _ in racers)
    for racer in racers:
        racer.join(timeout=60)
    won = {job for job, ok in results.items() if ok}
    assert len(won) == 2
    assert reservations.holding_jobs(cfg) == won
    assert reservations.pending(cfg) == {GIB_KIB: 4}


def test_teardown_and_the_reaper_find_a_jobs_held_pages(cfg: Any, root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages held by a prologue that died before the job directory: the epilogue and the
    reaper see them, and the teardown leaves nothing."""
    from vtorque.admin import reaper
    from vtorque.epilogue import teardown
    request, placements = _plan(cfg, root, "vcpus=2,ram=2G,hugepages=1G", (0, 1))
    reservations.reserve(cfg, "11.srv", request, placements, "vtnode1")
    assert teardown.has_local_state("11.srv", cfg)
    assert not teardown.has_local_state("12.srv", cfg)

    from tests.standins.empty_node import ForgetfulServer as Server
    from tests.standins.empty_node import NoHost
    from vtorque.vm import host, lifecycle
    monkeypatch.setattr(host, "Host", NoHost)
    monkeypatch.setattr(lifecycle, "Host", NoHost)
    assert "11.srv" in reaper.local_jobs(cfg)
    verdicts = reaper.reap(cfg, Server())
    assert [(v.job_id, v.action) for v in verdicts] == [("11.srv", "reaped")]
    assert reservations.holding_jobs(cfg) == set()
    assert not teardown.has_local_state("11.srv", cfg)
    paths = lifecycle.paths_for("11.srv", cfg)
    assert not os.path.lexists(paths.lock) and not os.path.lexists(paths.job_dir)


def test_libvirt_needs_a_hugetlbfs_of_the_page_size_mounted(tmp_path: Path) -> None:
    """Seen on the real libvirt 9.0: without one it refuses the guest ("hugetlbfs
    filesystem is not mounted or disabled by administrator config")."""
    from vtorque.vm.hugepages import hugetlbfs_mounted
    mounts = tmp_path / "proc" / "self" / "mounts"
    mounts.parent.mkdir(parents=True)
    assert not hugetlbfs_mounted(str(tmp_path), 2048)
    mounts.write_text("proc /proc proc rw 0 0\n"
                      "hugetlbfs /dev/hugepages hugetlbfs rw,relatime 0 0\n")
    assert hugetlbfs_mounted(str(tmp_path), 2048)          # no pagesize=: the default
    assert not hugetlbfs_mounted(str(tmp_path), 1 << 20)
    mounts.write_text("none /hp1g hugetlbfs rw,pagesize=1G 0 0\n")
    assert hugetlbfs_mounted(str(tmp_path), 1 << 20)
    assert not hugetlbfs_mounted(str(tmp_path), 2048)
