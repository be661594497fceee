"""Unit tests of vtorque.vm.host against libvirt's test driver (faults items 4 and 9).

Each test has its own driver file (fixture test_uri). The test driver keeps its state per
connection, so every test works on the one Host connection it opens.
"""

from __future__ import annotations

import uuid

import libvirt
import pytest

from vtorque.errors import HypervisorError
from vtorque.vm.host import Host, TaggedDomain
from vtorque.vm.render import domain_xml
from vtorque.vm.spec import METADATA_NS


@pytest.fixture
def host(test_uri: str):
    with Host(test_uri, retries=1) as connection:
        yield connection


def plain_xml(name: str, metadata: str = "") -> str:
    return f"""<domain type="test">
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <metadata>{metadata}</metadata>
  <memory unit="MiB">64</memory>
  <vcpu>1</vcpu>
  <os><type arch="x86_64">hvm</type></os>
</domain>"""


def tag(job_id: str, rank: int | str) -> str:
    return f'<vt:job xmlns:vt="{METADATA_NS}" id="{job_id}" rank="{rank}" image="x"/>'


def start_job(host: Host, make_specs, job_id: str, count: int = 2) -> list[str]:
    specs = make_specs("kernel", f"vms_per_node={count}", job_id=job_id, domain_type="qemu")
    for spec in specs:
        host.start_transient(domain_xml(spec))
    return [s.name for s in specs]


def names(domains: list[TaggedDomain]) -> list[str]:
    return [d.name for d in domains]


def test_connect_failure_is_a_hypervisor_error(tmp_path) -> None:
    uri = f"test://{tmp_path}/missing.xml"
    with pytest.raises(HypervisorError, match=f"cannot connect to libvirt at {uri}"):
        Host(uri, retries=2, retry_delay=0)


def test_start_transient_renders_are_accepted(host: Host, make_specs) -> None:
    names_12 = start_job(host, make_specs, "12")
    assert all(host.state(name) == "running" for name in names_12)
    domains = host.tagged_domains("12")
    assert names(domains) == names_12
    first = domains[0]
    assert (first.job_id, first.rank, first.state, first.persistent) == ("12", 0, "running",
                                                                        False)
    assert uuid.UUID(first.uuid)


def test_start_transient_returns_the_uuid(host: Host) -> None:
    wanted = str(uuid.uuid4())
    head, rest = plain_xml("u").split("<uuid>")
    xml = f"{head}<uuid>{wanted}</uuid>{rest.split('</uuid>')[1]}"
    assert host.start_transient(xml) == wanted


def test_start_transient_errors_are_translated(host: Host) -> None:
    with pytest.raises(HypervisorError, match="libvirt refused to start the guest"):
        host.start_transient("<domain>not a domain")
    host.start_transient(plain_xml("twice"))
    with pytest.raises(HypervisorError, match="libvirt refused to start the guest"):
        host.start_transient(plain_xml("twice"))


def test_tagged_domains_compare_job_ids_exactly(host: Host, make_specs) -> None:
    jobs = {job: start_job(host, make_specs, job) for job in ("12", "123", "12[1]", "12[10]",
                                                               "1")}
    for job, expected in jobs.items():
        found = host.tagged_domains(job)
        assert names(found) == expected
        assert {d.job_id for d in found} == {job}
    assert host.tagged_domains("12.server") == []
    assert len(host.tagged_domains()) == 10


def test_tagged_domains_ignore_foreign_domains(host: Host) -> None:
    host.start_transient(plain_xml("foreign"))
    host.start_transient(plain_xml("other-ns", '<x:job xmlns:x="urn:other" id="12" rank="0"/>'))
    host.start_transient(plain_xml("bad-rank", tag("12", "x")))
    host.start_transient(plain_xml("ours", tag("12", 3)))
    assert [(d.name, d.rank) for d in host.tagged_domains()] == [("ours", 3)]
    assert host.state("foreign") == "running"


def test_tagged_domains_are_sorted_by_job_and_rank(host: Host) -> None:
    for name, job, rank in (("c", "2", 1), ("a", "2", 10), ("b", "1", 5), ("d", "2", 0)):
        host.start_transient(plain_xml(name, tag(job, rank)))
    assert [(d.job_id, d.rank) for d in host.tagged_domains()] == [("1", 5), ("2", 0),
                                                                    ("2", 1), ("2", 10)]


def test_state_of_missing_domain_is_none(host: Host) -> None:
    assert host.state("no-such-domain") is None


def test_destroy_running_transient(host: Host, make_specs) -> None:
    first, second = start_job(host, make_specs, "12")
    host.destroy(first)
    assert host.state(first) is None
    assert host.state(second) == "running"
    assert names(host.tagged_domains("12")) == [second]


def test_destroy_missing_is_success(host: Host) -> None:
    host.destroy("never-existed")
    host.destroy("never-existed")


def test_destroy_twice_is_success(host: Host) -> None:
    host.start_transient(plain_xml("gone-soon", tag("7", 0)))
    host.destroy("gone-soon")
    host.destroy("gone-soon")
    assert host.state("gone-soon") is None


# libvirt's test driver refuses VIR_DOMAIN_UNDEFINE_NVRAM ("unsupported flags (0x4)"), as
# would any driver without NVRAM support: Host.destroy falls back to a plain undefine.


def test_destroy_stopped_persistent_domain(host: Host) -> None:
    host._conn.defineXML(plain_xml("stopped", tag("7", 0)))
    assert host.state("stopped") == "shutoff"
    [found] = host.tagged_domains("7")
    assert (found.state, found.persistent) == ("shutoff", True)
    host.destroy("stopped")
    assert host.state("stopped") is None
    assert host.tagged_domains("7") == []


def test_destroy_running_persistent_domain_undefines_it(host: Host) -> None:
    dom = host._conn.defineXML(plain_xml("defined", tag("7", 0)))
    dom.create()
    assert host.state("defined") == "running"
    host.destroy("defined")
    assert host.state("defined") is None
    assert "defined" not in host._conn.listDefinedDomains()


def test_destroy_paused_domain(host: Host) -> None:
    host.start_transient(plain_xml("paused", tag("7", 0)))
    host._conn.lookupByName("paused").suspend()
    assert host.state("paused") == "paused"
    host.destroy("paused")
    assert host.state("paused") is None


def test_other_libvirt_errors_are_translated(host: Host, monkeypatch) -> None:
    def broken(_name):
        error = libvirt.libvirtError("connection reset")
        error.err = (libvirt.VIR_ERR_SYSTEM_ERROR, 0, "connection reset", 0, "", "", "", 0, 0)
        raise error

    monkeypatch.setattr(host._conn, "lookupByName", broken)
    with pytest.raises(HypervisorError, match="cannot query guest x: connection reset"):
        host.state("x")
    with pytest.raises(HypervisorError, match="cannot look up guest x: connection reset"):
        host.destroy("x")


def test_domain_types(host: Host) -> None:
    assert host.domain_types() == {"test"}


def test_close_twice_is_harmless(test_uri: str) -> None:
    host = Host(test_uri, retries=1)
    host.close()
    host.close()


@pytest.fixture
def no_nvram_flag(monkeypatch) -> None:
    """Hide the NVRAM undefine flag the test driver does not support (Host.destroy also
    copes without it), so the rest of the persistent-domain path can be tested."""
    monkeypatch.setattr(libvirt, "VIR_DOMAIN_UNDEFINE_NVRAM", 0)


def test_destroy_stopped_persistent_domain_is_success(host: Host, no_nvram_flag) -> None:
    host._conn.defineXML(plain_xml("stopped", tag("7", 0)))
    [found] = host.tagged_domains("7")
    assert (found.state, found.persistent) == ("shutoff", True)
    host.destroy("stopped")  # destroy() says "not running": that is fine
    assert host.state("stopped") is None
    assert host.tagged_domains("7") == []
    host.destroy("stopped")


def test_destroy_running_persistent_domain_is_undefined(host: Host, no_nvram_flag) -> None:
    host._conn.defineXML(plain_xml("defined", tag("7", 0))).create()
    host.destroy("defined")
    assert host.state("defined") is None
    assert "defined" not in host._conn.listDefinedDomains()


def test_tagged_domains_filter_by_node(host: Host) -> None:
    # One hypervisor serving several batch nodes (as the real clusters here do): a node's
    # teardown must see only its own guests of the job.
    for name, node in (("on-a", "nodeA"), ("on-b", "nodeB")):
        meta = (f'<vt:job xmlns:vt="{METADATA_NS}" id="9" rank="0" node="{node}" '
                'image="x"/>')
        host.start_transient(plain_xml(name, meta))
    assert [d.name for d in host.tagged_domains("9", "nodeA")] == ["on-a"]
    assert [d.node for d in host.tagged_domains("9", "nodeB")] == ["nodeB"]
    assert sorted(d.name for d in host.tagged_domains("9")) == ["on-a", "on-b"]
