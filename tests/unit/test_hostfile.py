"""Unit tests of vtorque.mpi.hostfile: /etc/hosts lines, Open MPI's hostfile, the
PBS_NODEFILE, known_hosts and the ssh_config, alone and (property-based) for whole
generated jobs wired through vtorque.prologue.guests.job_guests.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vtorque.batch.pbs import parse_exec_host
from vtorque.mpi import hostfile, sshkeys
from vtorque.mpi.hostfile import GuestEntry
from vtorque.prologue import guests as guests_mod
from vtorque.batch.base import node_index
from vtorque.request import parse_request
from vtorque.vm import addresses
from vtorque.vm import lifecycle

PROPERTY = settings(database=None, deadline=None, max_examples=60,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
SECRET = bytes(range(32))

SCOPE = sshkeys.KeyScope("1.s", 1001, 1_700_000_000)


def entry(rank: int, name: str | None = None, address: str | None = "10.0.0.1",
          slots: int = 1, key: str | None = None) -> GuestEntry:
    return GuestEntry(rank=rank, hostname=name or f"g{rank}", address=address, slots=slots,
                      host_key=key)


# --- the builders, one at a time ----------------------------------------------------------

def test_hosts_lines_skip_guests_without_address() -> None:
    guests = [entry(0, address="10.0.0.5"), entry(1, address=None), entry(2, address="10.0.0.7")]
    assert hostfile.hosts_lines(guests) == "10.0.0.5 g0\n10.0.0.7 g2\n"
    assert hostfile.hosts_lines([]) == ""


def test_openmpi_hostfile_is_in_rank_order_with_slots() -> None:
    guests = [entry(2, slots=4), entry(0, slots=2), entry(1, slots=3)]
    assert hostfile.openmpi_hostfile(guests) == "g0 slots=2\ng1 slots=3\ng2 slots=4\n"


def test_nodefile_has_one_line_per_slot_in_rank_order() -> None:
    guests = [entry(1, slots=1), entry(0, slots=3)]
    assert hostfile.nodefile(guests) == "g0\ng0\ng0\ng1\n"


def test_known_hosts_pins_name_and_address() -> None:
    key = sshkeys.host_key(SECRET, SCOPE, 0).public
    key1 = sshkeys.host_key(SECRET, SCOPE, 1).public
    guests = [entry(1, address=None, key=key1), entry(0, address="10.0.0.9", key=key),
              entry(2, key=None)]
    assert hostfile.known_hosts(guests) == f"g0,10.0.0.9 {key}\ng1 {key1}\n"


def test_ssh_config_maps_names_and_never_trusts_new_keys() -> None:
    guests = [entry(1, name="vt7-1", address="10.1.0.2"), entry(0, name="vt7-0",
                                                               address="10.1.0.1"),
              entry(2, name="vt7-2", address=None)]
    text = hostfile.ssh_config("alice", "/j/id_ed25519", "/j/known_hosts", guests)
    assert text.startswith("Host vt7-0\n    HostName 10.1.0.1\nHost vt7-1\n"
                           "    HostName 10.1.0.2\nHost *\n")
    assert "Host vt7-2" not in text
    lines = [line.strip() for line in text.splitlines()]
    assert "StrictHostKeyChecking yes" in lines
    assert "StrictHostKeyChecking no" not in lines
    assert "User alice" in lines
    assert "IdentityFile /j/id_ed25519" in lines
    assert "IdentitiesOnly yes" in lines
    assert "UserKnownHostsFile /j/known_hosts" in lines
    assert "GlobalKnownHostsFile none" in lines
    assert "BatchMode yes" in lines
    # `Host *` comes last: ssh takes the first value of each option, so the per-guest
    # blocks must come before the catch-all.
    assert text.index("Host *") > text.index("Host vt7-1")


def test_ssh_config_without_guests_is_only_the_catch_all() -> None:
    text = hostfile.ssh_config("bob", "/k", "/kh")
    assert text.startswith("Host *\n")
    assert text.count("Host ") == 1


# --- whole jobs, generated ---------------------------------------------------------------

_LABEL = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,9}", fullmatch=True)
NODE_NAME = st.builds(lambda labels: ".".join(labels), st.lists(_LABEL, min_size=1, max_size=4))
SLOT_SPEC = st.sampled_from(["0", "3", "0-3", "4-5", "0,2-3", "7"])
JOB_ID = st.sampled_from(["42.head", "7", "12[3].server.example.org", "99999.cl-1",
                          "1234567890123456.x"])


def _slot_count(spec: str) -> int:
    total = 0
    for item in spec.split(","):
        lo, _, hi = item.partition("-")
        total += int(hi or lo) - int(lo) + 1
    return total


@st.composite
def exec_hosts(draw: Any) -> tuple[str, tuple[str, ...], tuple[int, ...]]:
    """(exec_host text, expected unique nodes in first-appearance order, their slots)."""
    names = draw(st.lists(NODE_NAME, min_size=1, max_size=5,
                          unique_by=lambda n: n.lower()))
    extra = draw(st.lists(st.sampled_from(range(len(names))), max_size=6))
    order = draw(st.permutations(list(range(len(names))) + extra))
    parts, slots = [], {}
    for index in order:
        spec = draw(SLOT_SPEC)
        parts.append(f"{names[index]}/{spec}")
        slots[names[index]] = slots.get(names[index], 0) + _slot_count(spec)
    expected = tuple(dict.fromkeys(names[i] for i in order))
    return "+".join(parts), expected, tuple(slots[n] for n in expected)


@pytest.fixture
def job_config(make_config: Any, tmp_path: Path) -> Any:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    return make_config({
        "secret_file": str(secret),
        "limits": {"vcpus": 64, "vms_per_node": 8},
        "network": {"mode": "bridge", "subnet": "10.20.0.0/16", "gateway": "10.20.0.1",
                    "pool_first": 16, "pool_last": 65000},
        "batch": {"shared_state_dir": str(tmp_path / "shared")},
    })


@PROPERTY
@given(host=exec_hosts(), vcpus=st.integers(1, 6), vms=st.integers(1, 4), job_base=JOB_ID)
def test_generated_jobs_are_consistent(job_config: Any, monkeypatch: pytest.MonkeyPatch,
                                       host: tuple[str, tuple[str, ...], tuple[int, ...]],
                                       vcpus: int, vms: int, job_base: str) -> None:
    text, expected_nodes, expected_slots = host
    nodes, slots = parse_exec_host(text)
    assert nodes == expected_nodes and slots == expected_slots
    job_id = job_base     # released after each example: the shared dir outlives them
    request = parse_request(f"vcpus={vcpus},vms_per_node={vms}", job_config)
    total = len(nodes) * vms
    block = addresses.allocate(job_config, job_id, total)
    try:
        secret = sshkeys.read_secret(job_config.secret_file)
        guests = guests_mod.job_guests(job_id, request, len(nodes), block, secret,
                                       sshkeys.KeyScope(job_id, 1001, 1_700_000_000))
        _check_job(job_id, guests, block, total, vcpus, secret, job_config)
        _check_node_ranks(job_id, request, job_config, nodes, guests, monkeypatch)
    finally:
        addresses.release(job_config, job_id)


def _check_job(job_id: str, guests: list[GuestEntry], block: addresses.AddressBlock,
               total: int, vcpus: int, secret: bytes, config: Any) -> None:
    assert len(guests) == total
    assert [g.rank for g in guests] == list(range(total))
    names = [g.hostname for g in guests]
    assert len(set(names)) == total
    addrs = [ipaddress.IPv4Address(g.address) for g in guests]
    assert len(set(addrs)) == total
    net = ipaddress.IPv4Network(config.network.subnet)
    first = int(net.network_address) + config.network.pool_first
    last = int(net.network_address) + config.network.pool_last
    assert [int(a) for a in addrs] == list(range(block.first, block.first + total))
    assert first <= block.first and block.first + total - 1 <= last

    hosts = hostfile.hosts_lines(guests).splitlines()
    assert hosts == [f"{g.address} {g.hostname}" for g in guests]

    mpi = hostfile.openmpi_hostfile(list(reversed(guests))).splitlines()
    assert [line.split()[0] for line in mpi] == names          # rank 0 first, rank order
    assert all(line.split()[1] == f"slots={vcpus}" for line in mpi)
    assert sum(int(line.split("slots=")[1]) for line in mpi) == total * vcpus

    nodefile = hostfile.nodefile(guests).splitlines()
    assert len(nodefile) == total * vcpus
    assert nodefile == [n for n in names for _ in range(vcpus)]

    known = hostfile.known_hosts(guests).splitlines()
    assert len(known) == total
    for guest, line in zip(guests, known, strict=True):
        pinned, key_type, blob = line.split(" ")
        assert pinned == f"{guest.hostname},{guest.address}"
        key = load_ssh_public_key(f"{key_type} {blob}".encode())
        assert isinstance(key, Ed25519PublicKey)
        assert f"{key_type} {blob}" == sshkeys.host_key(
            secret, sshkeys.KeyScope(job_id, 1001, 1_700_000_000), guest.rank).public
    assert len({line.split(" ", 1)[1] for line in known}) == total   # one key per guest

    config_text = hostfile.ssh_config("alice", "/u/id", "/u/kh", guests)
    for guest in guests:
        assert f"Host {guest.hostname}\n    HostName {guest.address}\n" in config_text
    assert "StrictHostKeyChecking no" not in config_text


def _check_node_ranks(job_id: str, request: Any, config: Any, nodes: tuple[str, ...],
                      job_guests: list[GuestEntry], monkeypatch: pytest.MonkeyPatch) -> None:
    """Node i (by its position in the batch node list) starts ranks i*vms .. i*vms+vms-1."""
    started: dict[str, list[int]] = {}

    def fake_check(job: str, req: Any, cfg: Any, catalog: Any = None, *,
                   job_cores: Any = None) -> lifecycle.Plan:
        return lifecycle.Plan(job, req, None)

    def fake_start(plan: lifecycle.Plan, cfg: Any, *, first_rank: int = 0,
                   addresses: Any = None, extras: Any = None, **_: Any) -> lifecycle.UpResult:
        job, req = plan.job_id, plan.request
        ranks = list(range(first_rank, first_rank + req.vms_per_node))
        started[current] = ranks
        assert addresses is not None
        return lifecycle.UpResult(job, [lifecycle.Guest(job, r, f"d{r}", f"h{r}", "running",
                                                        address=addresses.address(r))
                                        for r in ranks])

    monkeypatch.setattr(lifecycle, "check", fake_check)
    monkeypatch.setattr(lifecycle, "start", fake_start)
    vms = request.vms_per_node
    for name in nodes:
        current = name
        index = node_index(name, nodes)
        result, seen = guests_mod.bring_up(job_id, request, config, user=None,
                                           node_index=index, node_count=len(nodes))
        assert [g.rank for g in seen] == [g.rank for g in job_guests]
        assert [g.hostname for g in seen] == [g.hostname for g in job_guests]
        assert [g.address for g in seen] == [g.address for g in job_guests]
        assert [g.address for g in result.guests] == \
            [job_guests[r].address for r in started[name]]
    for index, name in enumerate(nodes):
        assert started[name] == list(range(index * vms, index * vms + vms))
    every = sorted(r for ranks in started.values() for r in ranks)
    assert every == list(range(len(nodes) * vms))
