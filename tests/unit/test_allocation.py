"""What the batch system allocated a job on each node (vtorque/batch/allocation.py), read
from the real servers' records, and the check that a VM request fits it
(request.check_fits_allocation): a request beyond the job's own allocation is the user's
error, with the numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from vtorque.batch.allocation import NodeAllocation
from vtorque.batch.base import expand_id_ranges
from vtorque.batch.openpbs import parse_qstat_json
from vtorque.batch.slurm_record import parse_show_job
from vtorque.batch.torque import parse_qstat_xml
from vtorque.errors import NodeError, RecordError, RequestError
from vtorque.request import (
    check_fits_allocation,
    guests_memory_mib,
    parse_request,
    qemu_overhead_mib,
)
from vtorque.units import parse_pbs_size_bytes, parse_slurm_size_mib

DATA = Path(__file__).resolve().parents[1] / "data"
TORQUE_REAL = DATA / "torque-6.1-real-qstat-fx-running.xml"
PBS_REAL = DATA / "openpbs-23.06-real-qstat-f-F-json-x-running.json"
PBS_19 = DATA / "openpbs-qstat-f-F-json.json"
SLURM_REAL = DATA / "slurm-22.05-prolog-show-job-dd.txt"
SLURM_ARRAY = DATA / "slurm-22.05-prolog-show-job-dd-array.txt"


# --- Torque ----------------------------------------------------------------------------------

def torque_job(exec_host: str, resources: str = "", extra: str = "",
               vm: bool = True) -> str:
    """The real Torque 6.1 record of job 0.vm with another allocation."""
    text = TORQUE_REAL.read_text()
    text = re.sub(r"<exec_host>[^<]*</exec_host>", f"<exec_host>{exec_host}</exec_host>"
                  + extra, text)
    text = text.replace("<Resource_List>", f"<Resource_List>{resources}")
    if not vm:
        text = text.replace("VTORQUE_VM=img=testguest;vcpus=1,", "")
    return text


def test_torque_real_record_one_slot_and_no_memory_bound_on_each_node() -> None:
    ctx = parse_qstat_xml(TORQUE_REAL.read_text(), "0.vm")
    assert ctx.nodes == ("localhost", "vm")
    assert ctx.allocations == (
        NodeAllocation(1, None, (0,), "exec_host", "", "exec_host"),
        NodeAllocation(1, None, (0,), "exec_host", "", "exec_host"))
    assert ctx.allocation("vm") == ctx.allocations[1]
    assert ctx.allocation("vm.cluster") == ctx.allocations[1]     # short name matches
    with pytest.raises(NodeError):
        ctx.allocation("elsewhere")


def test_torque_job_memory_is_split_by_slots_as_torque_splits_it() -> None:
    """Resource_List.mem is per job: mem * slots here / slots of the job, rounded down
    (pbs_mom's get_memory_limit_from_resource_list)."""
    ctx = parse_qstat_xml(torque_job("a/0-1+b/0-1,3", "<mem>2gb</mem>"), "0.vm")
    assert ctx.nodes == ("a", "b") and ctx.slots == (2, 3)
    assert [a.memory_mib for a in ctx.allocations] == [2048 * 2 // 5, 2048 * 3 // 5]
    assert ctx.allocations[1].cores == (0, 1, 3)
    assert {a.memory_from for a in ctx.allocations} == {"Resource_List.mem"}
    vmem = parse_qstat_xml(torque_job("a/0", "<vmem>1gb</vmem>"), "0.vm")
    assert vmem.allocations[0].memory_mib == 1024
    assert vmem.allocations[0].memory_from == "Resource_List.vmem"


def test_torque_pmem_is_per_slot() -> None:
    """As on the real genius cluster (Torque 6.1.3): pmem=5gb, 36 slots on each of two
    nodes -> 180 GiB per node (its req_information.memory.0 = 188743680kb)."""
    ctx = parse_qstat_xml(torque_job("a/0-35+b/0-35", "<pmem>5gb</pmem>"), "0.vm")
    assert [a.memory_mib for a in ctx.allocations] == [188743680 // 1024] * 2
    assert ctx.allocations[0].memory_from == "Resource_List.pmem"


def test_torque_cpuset_string_names_the_cores() -> None:
    """cpuset_string as Torque 6 with cgroups prints it (r25i27n01:0-35+r25i27n03:0-35)."""
    ctx = parse_qstat_xml(torque_job("a/0-1+b/0-1", extra="<cpuset_string>a:4-5+b:0,7"
                                     "</cpuset_string>"), "0.vm")
    assert [a.cores for a in ctx.allocations] == [(4, 5), (0, 7)]
    assert {a.cores_from for a in ctx.allocations} == {"cpuset_string"}


@pytest.mark.parametrize("extra, resources", [
    ("<cpuset_string>a:0-1+a:2</cpuset_string>", ""),
    ("<cpuset_string>a</cpuset_string>", ""),
    ("<cpuset_string>z:0</cpuset_string>", ""),
    ("<cpuset_string>a:0-9999999</cpuset_string>", ""),
    ("", "<mem>lots</mem>"),
    ("", "<mem>1.5gb</mem>"),
    ("", "<pmem>1\u212ab</pmem>"),            # the Kelvin sign folds onto k
])
def test_an_unreadable_torque_allocation_refuses_a_vm_job_only(extra: str,
                                                               resources: str) -> None:
    with pytest.raises(NodeError, match="cannot read what job 0.vm was allocated"):
        parse_qstat_xml(torque_job("a/0-1", resources, extra), "0.vm")
    plain = parse_qstat_xml(torque_job("a/0-1", resources, extra, vm=False), "0.vm")
    assert plain.allocations == () and not plain.is_vm_job


def test_pbs_style_exec_host_has_no_core_ids() -> None:
    ctx = parse_qstat_xml(torque_job("a/0*2"), "0.vm")
    assert ctx.allocations[0].cpus == 2 and ctx.allocations[0].cores is None


# --- OpenPBS ---------------------------------------------------------------------------------

def pbs_job(exec_host: str, exec_vnode: str) -> str:
    data = json.loads(PBS_REAL.read_text())
    job = next(iter(data["Jobs"].values()))
    job["exec_host"], job["exec_vnode"] = exec_host, exec_vnode
    return json.dumps(data)


def test_openpbs_real_record_ncpus_and_no_memory() -> None:
    ctx = parse_qstat_json(PBS_REAL.read_text(), "16.vm")
    assert ctx.nodes == ("n1", "n2")
    assert ctx.allocations == (NodeAllocation(1, None, None, "exec_vnode"),) * 2


def test_pbs_pro_record_with_memory_per_chunk() -> None:
    data = json.loads(PBS_19.read_text())
    job_id = next(iter(data["Jobs"]))
    ctx = parse_qstat_json(PBS_19.read_text(), job_id)
    assert [(a.cpus, a.memory_mib) for a in ctx.allocations] == [(2, 4096), (2, 4096)]
    assert ctx.allocations[0].memory_from == "exec_vnode"


def test_openpbs_vnodes_of_one_host_add_up() -> None:
    text = pbs_job("n1/0*4+n2/0*4+n1/1*1",
                   "(n1[0]:ncpus=2:mem=2gb+n1[1]:ncpus=2:mem=1048576kb)+(n2:ncpus=4:mem=4gb)"
                   "+(n1[1]:ncpus=1:mem=512mb)")
    ctx = parse_qstat_json(text, "16.vm")
    assert ctx.nodes == ("n1", "n2")
    assert [(a.cpus, a.memory_mib) for a in ctx.allocations] == [(5, 3584), (4, 4096)]


def test_a_vnode_without_mem_leaves_its_host_unbounded() -> None:
    ctx = parse_qstat_json(pbs_job("n1/0*2+n2/0", "(n1:ncpus=2:mem=2gb)+(n2:ncpus=1)"),
                           "16.vm")
    assert [a.memory_mib for a in ctx.allocations] == [2048, None]


@pytest.mark.parametrize("exec_vnode", ["n1:ncpus=1", "(n1:ncpus=x)", "(n1:ncpus=1",
                                        "(n1:ncpus=1)+", "(n1:ncpus=1:ncpus=2)",
                                        "(n1:ncpus=1:mem=2q)", "((n1:ncpus=1))",
                                        "(n1:ncpus=1)(n2:ncpus=1)", "(n1:ncpus=1)"])
def test_an_unreadable_exec_vnode_refuses_a_vm_job(exec_vnode: str) -> None:
    # The last one puts nothing on n2, one of the job's nodes.
    with pytest.raises(NodeError, match="cannot read what job 16.vm was allocated"):
        parse_qstat_json(pbs_job("n1/0+n2/0", exec_vnode), "16.vm")


# --- Slurm -----------------------------------------------------------------------------------

def test_slurm_real_record_cpu_ids_and_memory_per_node() -> None:
    """`Nodes=vm CPU_IDs=0-1 Mem=1000` from the real 22.05 Prolog's scontrol -dd."""
    ctx = parse_show_job(SLURM_REAL.read_text(), "1").ctx
    assert ctx.allocations == (NodeAllocation(2, 1000, (0, 1), "CPU_IDs", "Mem", "CPU_IDs"),)
    array = parse_show_job(SLURM_ARRAY.read_text(), "26").ctx
    assert array.allocations[0].memory_mib == 4000


def multi_node(details: str, extra_fields: str = "") -> str:
    text = SLURM_REAL.read_text().replace("NodeList=vm", "NodeList=n[1-3]")
    text = text.replace("BatchHost=vm", "BatchHost=n2").replace("NumNodes=1", "NumNodes=3")
    text = text.replace("     Nodes=vm CPU_IDs=0-1 Mem=1000 GRES=\n", details)
    return text.replace("MinMemoryNode=1000M", extra_fields or "MinMemoryNode=1000M")


def test_slurm_detail_lines_per_group_of_nodes_in_batch_host_order() -> None:
    text = multi_node("     Nodes=n[1,3] CPU_IDs=22-23 Mem=2000 GRES=\n"
                      "     Nodes=n2 CPU_IDs=0-3,8 Mem=0 GRES=\n")
    ctx = parse_show_job(text, "1").ctx
    assert ctx.nodes == ("n2", "n1", "n3")
    assert [(a.cpus, a.memory_mib, a.cores) for a in ctx.allocations] == [
        (5, None, (0, 1, 2, 3, 8)), (2, 2000, (22, 23)), (2, 2000, (22, 23))]


@pytest.mark.parametrize("fields, expected", [
    ("MinMemoryNode=4G", [4096, 4096, 4096]),
    ("MinMemoryCPU=100M", [100, 100, 100]),     # NumCPUs=2 over 3 nodes: 1 CPU each
    ("MinMemoryNode=0", [None, None, None]),
])
def test_slurm_without_detail_lines_reads_the_memory_fields(fields: str,
                                                            expected: list) -> None:
    ctx = parse_show_job(multi_node("", fields).replace("NumCPUs=2", "NumCPUs=3"), "1").ctx
    assert [a.memory_mib for a in ctx.allocations] == expected
    assert [a.cores for a in ctx.allocations] == [None] * 3


def test_an_unreadable_slurm_allocation_refuses_a_vm_job() -> None:
    text = SLURM_REAL.read_text().replace("Mem=1000 GRES", "Mem=lots GRES")
    with pytest.raises(RecordError, match="unreadable allocation"):
        parse_show_job(text, "1")
    plain = text.replace("Comment=vtorque:img=testguest;vcpus=1", "Comment=mine")
    assert parse_show_job(plain, "1").ctx.allocations == ()


def test_slurm_json_memory_per_node() -> None:
    data = json.loads((DATA / "slurm-scontrol-show-job-24.11.json").read_text())
    job = data["jobs"][0]
    job_id = str(job["job_id"]) if not isinstance(job["job_id"], dict) \
        else str(job["job_id"]["number"])
    job["nodes"] = "n1"
    job["comment"] = "vtorque:img=x"
    job["memory_per_node"] = {"set": True, "infinite": False, "number": 3000}
    ctx = parse_show_job(json.dumps(data), job_id).ctx
    assert [(a.memory_mib, a.memory_from) for a in ctx.allocations] == [
        (3000, "memory_per_node")]
    job["job_resources"] = {"allocated_nodes": [{"nodename": "n1", "cpus": 4,
                                                 "memory_allocated": 1500}]}
    ctx = parse_show_job(json.dumps(data), job_id).ctx
    assert [(a.cpus, a.memory_mib) for a in ctx.allocations] == [(4, 1500)]


# --- parsers ---------------------------------------------------------------------------------

def test_sizes_and_id_lists_as_the_servers_print_them() -> None:
    assert parse_pbs_size_bytes("4gb") == 4 << 30
    assert parse_pbs_size_bytes("1048576kb") == 1 << 30
    assert parse_pbs_size_bytes("100") == 100 and parse_pbs_size_bytes("2mw") == 16 << 20
    assert parse_slurm_size_mib("1000") == 1000 and parse_slurm_size_mib("4G") == 4096
    assert parse_slurm_size_mib("2047K") == 1
    for bad in ("4g", "", "1.5gb", "4 gb", "\u0664gb", "1\u212ab", "-1gb"):
        with pytest.raises(ValueError):
            parse_pbs_size_bytes(bad)
    for bad in ("", "1.5G", "4GB", "\u0664"):
        with pytest.raises(ValueError):
            parse_slurm_size_mib(bad)
    assert expand_id_ranges("3,0-2,2") == (0, 1, 2, 3)
    for bad in ("", "1-", "3-1", "a", "0-99999999", "\u0661"):
        with pytest.raises(ValueError):
            expand_id_ranges(bad)


# --- the check -------------------------------------------------------------------------------

def alloc(cpus: int, memory_mib: int | None) -> NodeAllocation:
    return NodeAllocation(cpus, memory_mib, None, "exec_host", "Resource_List.mem")


def test_qemu_overhead_counts_a_fixed_part_vcpus_and_page_tables(cfg: Any) -> None:
    request = parse_request("vcpus=4,ram=2G,vms_per_node=2", cfg)
    assert qemu_overhead_mib(request) == 64 + 4 * 4 + 2048 // 512
    assert guests_memory_mib(request, rank0_here=True) == 2 * (2048 + 84)


def test_the_issue_case_one_core_one_gig_is_refused_with_the_numbers(make_config: Any) -> None:
    """A job allocated 1 core and 1 GB asked for an 8-vCPU, 32 GiB guest."""
    cfg = make_config({"limits": {"vcpus": 64, "ram": "64G"}})
    request = parse_request("vcpus=8,ram=32G", cfg)
    with pytest.raises(RequestError) as info:
        check_fits_allocation(request, alloc(1, 1024), "n1", rank0_here=True)
    message = str(info.value)
    assert "\n" not in message and info.value.key == "vcpus"
    assert "needs 8 cores on node n1" in message and "allocated this job 1 there" in message
    assert "(exec_host)" in message
    with pytest.raises(RequestError) as info:
        check_fits_allocation(request, alloc(8, 1024), "n1", rank0_here=True)
    message = str(info.value)
    assert info.value.key == "ram" and "\n" not in message
    want = 32768 + qemu_overhead_mib(request)
    assert f"needs {want}M on node n1" in message
    assert "allocated this job 1G there (Resource_List.mem)" in message


def test_a_request_that_fits_exactly_passes(cfg: Any) -> None:
    request = parse_request("vcpus=2,ram=512M,vms_per_node=2", cfg)
    need = guests_memory_mib(request, rank0_here=False)
    check_fits_allocation(request, alloc(4, need), "n1", rank0_here=False)
    with pytest.raises(RequestError):
        check_fits_allocation(request, alloc(4, need - 1), "n1", rank0_here=False)
    with pytest.raises(RequestError):
        check_fits_allocation(request, alloc(3, need), "n1", rank0_here=False)


def test_unbounded_memory_checks_the_cores_only(cfg: Any) -> None:
    request = parse_request("vcpus=1,ram=64G", cfg)
    check_fits_allocation(request, alloc(1, None), "n1", rank0_here=True)


def test_a_scratch_disk_on_ramdisk_counts_on_the_node_of_rank_0(cfg: Any) -> None:
    request = parse_request("ram=1G,disk=4G,fs_type=ramdisk", cfg)
    guests = 1024 + qemu_overhead_mib(request)
    check_fits_allocation(request, alloc(1, guests), "n2", rank0_here=False)
    with pytest.raises(RequestError, match="the 4G scratch disk on ramdisk"):
        check_fits_allocation(request, alloc(1, guests), "n1", rank0_here=True)
    check_fits_allocation(request, alloc(1, guests + 4096), "n1", rank0_here=True)
    on_disk = parse_request("ram=1G,disk=4G,fs_type=sharedfs", cfg)
    check_fits_allocation(on_disk, alloc(1, guests), "n1", rank0_here=True)
    with pytest.raises(RequestError, match="of overlays on ramdisk"):
        check_fits_allocation(request, alloc(1, guests), "n2", rank0_here=False,
                              overlay_mib=100)


def test_a_job_vsub_sized_fits_its_allocation(cfg: Any) -> None:
    """What vsub asks of each node (the guests plus the host's reserve) holds the guests
    and QEMU's overhead while the reserve covers the overhead."""
    from vtorque.submit.submission import footprint
    request = parse_request("vcpus=2,ram=2G,vms_per_node=2", cfg)
    need = footprint(request.vcpus, request.ram_mib, request.vms_per_node,
                     cfg.host_reserve.cores, cfg.host_reserve.memory)
    assert cfg.host_reserve.memory >= request.vms_per_node * qemu_overhead_mib(request)
    check_fits_allocation(request, alloc(need.cores, need.memory_mib), "n1", rank0_here=True)


def test_the_node_name_in_the_message_is_bounded(cfg: Any) -> None:
    request = parse_request("vcpus=2", cfg)
    with pytest.raises(RequestError) as info:
        check_fits_allocation(request, alloc(1, None), "n" * 500 + "\nforged", rank0_here=True)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


# --- in the prologue: each node holds its guests against its own part ------------------------

def _torque(cpus: int, gigs: int) -> Any:
    return parse_qstat_xml(torque_job(f"n1/0-{cpus - 1}", f"<mem>{gigs}gb</mem>"), "0.vm")


def _openpbs(cpus: int, gigs: int) -> Any:
    return parse_qstat_json(pbs_job(f"n1/0*{cpus}", f"(n1:ncpus={cpus}:mem={gigs}gb)"),
                            "16.vm")


def _slurm_text(cpus: int, gigs: int) -> Any:
    text = SLURM_REAL.read_text().replace("CPU_IDs=0-1 Mem=1000",
                                          f"CPU_IDs=0-{cpus - 1} Mem={gigs * 1024}")
    return parse_show_job(text, "1").ctx


def _slurm_json(cpus: int, gigs: int) -> Any:
    data = json.loads((DATA / "slurm-scontrol-show-job-24.11.json").read_text())
    job = data["jobs"][0]
    job_id = str(job["job_id"]) if not isinstance(job["job_id"], dict) \
        else str(job["job_id"]["number"])
    job["nodes"], job["comment"] = "n1", "vtorque:img=x"
    job["job_resources"] = {"allocated_nodes": [{"nodename": "n1", "cpus": cpus,
                                                 "memory_allocated": gigs * 1024}]}
    return parse_show_job(json.dumps(data), job_id).ctx


FORMATS = {"torque exec_host + mem": (_torque, "exec_host", "Resource_List.mem"),
           "openpbs exec_vnode": (_openpbs, "exec_vnode", "exec_vnode"),
           "slurm -dd CPU_IDs/Mem": (_slurm_text, "CPU_IDs", "Mem"),
           "slurm json": (_slurm_json, "job_resources", "job_resources")}


class Started:
    """guests.bring_up as a recorder: what would have been started."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        from types import SimpleNamespace

        from vtorque.prologue import guests
        self.calls: list[tuple[int, int]] = []

        def bring_up(job_id: str, request: Any, config: Any, **kwargs: Any) -> Any:
            self.calls.append((request.vcpus, request.ram_mib))
            guest = SimpleNamespace(rank=0, name="vt-0", hostname="vm0", address=None,
                                    mac="52:54:00:00:00:01", ready_seconds=0.5, started="boot")
            return SimpleNamespace(guests=[guest], seconds=0.1, restored=0, image_kind="kernel",
                                   image_name="x", image_digest="0" * 64, rdma=None), []
        monkeypatch.setattr(guests, "bring_up", bring_up)


def _start(ctx: Any, make_config: Any, tmp_path: Path, vm: str) -> Any:
    """This node's prologue for `ctx` (its first node) asking for `vm`."""
    import dataclasses

    from vtorque.prologue import provision
    ctx = dataclasses.replace(ctx, vm_request=vm, user="root", uid=0, created=1796170623)
    cfg = make_config({"node_name": ctx.nodes[0], "log_file": str(tmp_path / "vt.log")})
    return provision.start(ctx, cfg, mother_superior=False), cfg, ctx


@pytest.mark.parametrize("form", sorted(FORMATS))
def test_one_core_and_one_gig_refuse_eight_vcpus_and_32_gib_in_every_format(
        form: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtorque.cluster import handoff
    from vtorque.outcome import ABORT, USER
    parse, cores_from, memory_from = FORMATS[form]
    started = Started(monkeypatch)
    ctx = parse(1, 1)
    assert (ctx.allocations[0].cpus, ctx.allocations[0].memory_mib) == (1, 1024)
    outcome, cfg, ctx = _start(ctx, make_config, tmp_path, "vcpus=8;ram=32G")
    node = ctx.nodes[0]
    assert (outcome.action, outcome.fault) == (ABORT, USER)
    assert "\n" not in outcome.message
    assert outcome.message.startswith(f"vtorque: job {ctx.job_id} refused: -vm vcpus=8 ")
    assert (f"needs 8 cores on node {node}, but the batch system allocated this job 1 "
            f"there ({cores_from})") in outcome.message
    assert started.calls == []
    status = handoff.read(cfg, ctx.job_id, node)
    assert status.state == handoff.FAILED and status.user_fault and status.clean
    # Cores enough, memory not: the memory is named, with QEMU's share.
    outcome, _, _ = _start(parse(8, 1), make_config, tmp_path, "vcpus=8;ram=32G")
    assert (outcome.action, outcome.fault) == (ABORT, USER)
    assert f"allocated this job 1G there ({memory_from})" in outcome.message
    assert "for QEMU" in outcome.message and started.calls == []


@pytest.mark.parametrize("form", sorted(FORMATS))
def test_a_request_within_the_allocation_starts_in_every_format(
        form: str, make_config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtorque.outcome import RUN
    parse = FORMATS[form][0]
    started = Started(monkeypatch)
    outcome, _, _ = _start(parse(8, 40), make_config, tmp_path, "vcpus=8;ram=32G")
    assert outcome.action == RUN, outcome.message
    assert started.calls == [(8, 32768)]


@pytest.mark.parametrize("request_text", ["vcpus=1,ram=1G", "vcpus=4,ram=4G,vms_per_node=8",
                                          "vcpus=2,ram=512M,vms_per_node=3"])
@pytest.mark.parametrize("reserve", ["0", "1G"])
def test_what_vsub_asks_for_always_fits_the_nodes_check(make_config, request_text: str,
                                                        reserve: str) -> None:
    """vsub sizes a node's memory the way every node counts it (RAM plus QEMU's
    overhead, plus the host's reserve): a job it sized is never refused for memory, even
    with no reserve to absorb QEMU's share."""
    from vtorque.request import parse_request
    from vtorque.submit import common
    cfg = make_config({"host_reserve": {"cores": 0, "memory": reserve}})
    request = parse_request(request_text, cfg)
    need = common.footprint_of(request, cfg)
    allocated = NodeAllocation(cpus=need.cores, memory_mib=need.memory_mib)
    check_fits_allocation(request, allocated, "n1", rank0_here=True)
    short = NodeAllocation(cpus=need.cores, memory_mib=need.memory_mib - 1 -
                           cfg.host_reserve.memory)
    with pytest.raises(RequestError):
        check_fits_allocation(request, short, "n1", rank0_here=True)
