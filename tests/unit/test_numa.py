"""Unit tests of vtorque.vm.numa: the node's topology from a fake sysfs tree
(tests/standins/fake_numa.py) and where each guest's vCPUs and memory go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.standins import fake_numa
from vtorque.errors import NodeError
from vtorque.request import parse_request
from vtorque.vm.numa import (
    Cell,
    GuestPlacement,
    Topology,
    cpulist,
    guest_placements,
    parse_cpulist,
    place,
    read_topology,
    split_memory,
)

TWO_NODES = Topology(((0, (0, 1, 2, 3)), (1, (4, 5, 6, 7))))
ONE_NODE = Topology(((0, tuple(range(8))),))
# Some BIOSes number the CPUs round-robin over the sockets.
INTERLEAVED = Topology(((0, (0, 2, 4, 6)), (1, (1, 3, 5, 7))))


# --- CPU lists and the topology -----------------------------------------------------------

@pytest.mark.parametrize("text, cpus", [("0-3", (0, 1, 2, 3)), ("0-1,8,10-11\n", (0, 1, 8, 10, 11)),
                                        ("", ()), ("5", (5,))])
def test_cpulists_parse_and_format(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus
    assert parse_cpulist(cpulist(cpus)) == cpus
    assert cpulist((11, 10, 8, 1, 0)) == "0-1,8,10-11"


@pytest.mark.parametrize("text", ["0-", "3-1", "a", "0,,1", "1-99999999", "0 1"])
def test_malformed_cpulists_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a CPU list"):
        parse_cpulist(text)


def test_topology_from_sysfs(tmp_path: Path) -> None:
    fake_numa.add_nodes(tmp_path, ["0-3", "4-7", ""])     # node 2: memory only (CXL)
    topology = read_topology(str(tmp_path))
    assert topology == TWO_NODES
    assert (topology.node_of(5), topology.node_of(9)) == (1, None)
    assert read_topology(str(tmp_path / "no-numa")) == Topology(())
    (tmp_path / fake_numa.NODE_DIR / "node1" / "cpulist").write_text("garbage\n")
    with pytest.raises(NodeError, match="node1/cpulist"):
        read_topology(str(tmp_path))


def test_this_machines_topology_reads() -> None:
    topology = read_topology("/")
    assert topology.nodes and all(cpus for _node, cpus in topology.nodes)


# --- placement ----------------------------------------------------------------------------

def test_memory_splits_like_the_vcpus_in_whole_pages() -> None:
    assert split_memory(4096, [2, 2], 1) == [2048, 2048]
    assert split_memory(5120, [2, 3], 1024) == [2048, 3072]
    assert split_memory(3072, [1, 1], 1024) in ([2048, 1024], [1024, 2048])
    assert sum(split_memory(1000, [1, 9], 2)) == 1000
    assert split_memory(1024, [1, 3], 1024) is None        # one page, two nodes


def test_a_guest_on_one_host_node_has_no_guest_topology() -> None:
    [cell] = place((4, 5), 2048, TWO_NODES)
    assert cell == Cell(1, (0, 1), (4, 5), 2048)
    placement = GuestPlacement((4, 5), True, (cell,), numatune=True)
    assert placement.memory_nodeset == "1" and placement.guest_cells == ()


def test_a_guest_spanning_two_host_nodes_mirrors_them() -> None:
    cells = place((2, 3, 4, 5), 4096, TWO_NODES)
    assert cells == (Cell(0, (0, 1), (2, 3), 2048), Cell(1, (2, 3), (4, 5), 2048))
    placement = GuestPlacement((2, 3, 4, 5), True, cells, numatune=True)
    assert placement.memory_nodeset == "0-1"
    assert [c.vcpu_list for c in placement.guest_cells] == ["0-1", "2-3"]
    assert placement.memory_by_node() == {0: 2048, 1: 2048}


def test_uneven_cores_split_memory_unevenly() -> None:
    """Two of the job's cores on node 0, three on node 1: the memory follows, in pages."""
    cells = place((2, 3, 4, 5, 6), 10240, TWO_NODES, granule_mib=1024)
    assert [(c.host_node, c.vcpus, c.memory_mib) for c in cells] == \
        [(0, (0, 1), 4096), (1, (2, 3, 4), 6144)]


def test_too_little_memory_for_every_node_stays_on_the_main_one() -> None:
    [cell] = place((3, 4, 5), 1024, TWO_NODES, granule_mib=1024)
    assert (cell.host_node, cell.vcpus, cell.memory_mib) == (1, (0, 1, 2), 1024)


def test_a_core_of_no_known_node_leaves_memory_unbound() -> None:
    assert place((7, 8), 1024, TWO_NODES) == ()
    assert place((0, 1), 1024, Topology(())) == ()


def _placements(make_config: Any, text: str, cores, topology, **overrides: Any):
    cfg = make_config(overrides)
    return guest_placements(cfg, parse_request(text, cfg), cores, topology)


def test_guests_take_shares_of_the_jobs_cores_by_node(make_config: Any) -> None:
    """Interleaved numbering: sorted shares would straddle both sockets; shares by node
    keep each guest on one."""
    [first, second] = _placements(make_config, "vcpus=4,vms_per_node=2,vcpu_pinning=yes",
                                  tuple(range(8)), INTERLEAVED)
    assert (first.cores, second.cores) == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert (first.memory_nodeset, second.memory_nodeset) == ("0", "1")
    assert first.guest_cells == second.guest_cells == ()


def test_a_two_node_guest_pinned_and_unpinned(make_config: Any) -> None:
    [pinned] = _placements(make_config, "vcpus=4,ram=4G,vcpu_pinning=yes", (2, 3, 4, 5),
                           TWO_NODES)
    assert pinned.pinned and pinned.cores == (2, 3, 4, 5) and pinned.vcpu_sets == ()
    assert [(c.host_node, c.vcpu_list, c.memory_mib) for c in pinned.guest_cells] == \
        [(0, "0-1", 2048), (1, "2-3", 2048)]
    [floating] = _placements(make_config, "vcpus=4,ram=4G", (2, 3, 4, 5), TWO_NODES)
    assert not floating.pinned
    # Each vCPU floats over its cell's cores: the guest's topology stays true.
    assert floating.vcpu_sets == ("2-3", "2-3", "4-5", "4-5")
    assert len(floating.guest_cells) == 2


def test_unpinned_guests_stay_on_the_jobs_cores(make_config: Any) -> None:
    specs = _placements(make_config, "vcpus=2,vms_per_node=2", (8, 9, 10, 11, 12), None)
    assert [p.vcpu_sets for p in specs] == [("8-9", "8-9"), ("10-11", "10-11")]
    assert all(p.memory_nodeset is None for p in specs)


def test_a_single_node_host_gets_no_numatune(make_config: Any) -> None:
    [placement] = _placements(make_config, "vcpus=2,vcpu_pinning=yes", (3, 4), ONE_NODE)
    assert placement.cores == (3, 4) and placement.memory_nodeset is None
    assert placement.guest_cells == ()
    assert placement.memory_by_node() == {0: 1024}     # its pages still come from node 0


def test_bind_off_leaves_memory_to_the_kernel(make_config: Any) -> None:
    [placement] = _placements(make_config, "vcpus=4,vcpu_pinning=yes", (2, 3, 4, 5),
                              TWO_NODES, numa={"bind": False})
    assert placement.cores == (2, 3, 4, 5) and placement.pinned
    assert placement.memory_nodeset is None and placement.memory_by_node() == {}


def test_without_job_cores_unpinned_guests_are_left_alone(make_config: Any) -> None:
    assert _placements(make_config, "vms_per_node=2", None, TWO_NODES) == \
        (GuestPlacement(), GuestPlacement())


def test_huge_pages_split_in_whole_pages(make_config: Any) -> None:
    [placement] = _placements(make_config, "vcpus=3,ram=3G,hugepages=1G,vcpu_pinning=yes",
                              (3, 4, 5), TWO_NODES)
    assert placement.memory_by_node() == {0: 1024, 1: 2048}
