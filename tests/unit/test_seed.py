"""Unit tests of vtorque.vm.seed: cloud-init NoCloud documents and the seed ISO."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
from dataclasses import replace
from pathlib import Path

import pycdlib
import pytest
import yaml

from vtorque.errors import Unsupported
from vtorque.ibverbs.transport import RXE_COMMANDS
from vtorque.vm import mounts
from vtorque.vm import seed as seed_mod
from vtorque.vm.shares import ShareSpec
from vtorque.vm.seed import SeedExtras, seed_documents, write_seed_iso
from vtorque.vm.spec import GuestSpec

NOBODY_GID = 65534


def user_data(docs: dict[str, str]) -> dict:
    assert docs["user-data"].startswith("#cloud-config\n")
    return yaml.safe_load(docs["user-data"])


def files_of(user: dict) -> dict[str, dict]:
    return {f["path"]: f for f in user["write_files"]}


def check_of(user: dict) -> str:
    """The last runcmd step: the shell script that ends in the ready line."""
    command = user["runcmd"][-1]
    assert command[:2] == ["sh", "-c"]
    return command[2]


def with_static_nic(spec: GuestSpec, mtu: int = 1500) -> GuestSpec:
    nic = replace(spec.nic, address="10.20.0.5", prefix=24, gateway="10.20.0.1", mtu=mtu)
    return replace(spec, nic=nic)


OWNER = dict(user="alice", user_uid=23456, user_gid=23457, user_group="hpc",
             user_home="/lustre/home/alice")


def test_documents_without_nic(make_specs, fixed) -> None:
    spec = make_specs("linux")[0]
    docs = seed_documents(spec)
    assert sorted(docs) == ["meta-data", "user-data"]
    meta = yaml.safe_load(docs["meta-data"])
    assert meta == {"instance-id": spec.name, "local-hostname": "vt12-0"}
    user = user_data(docs)
    assert user["hostname"] == "vt12-0"
    assert user["preserve_hostname"] is False
    assert user["disable_root"] is True and user["ssh_pwauth"] is False
    assert "users" not in user and "bootcmd" not in user
    [command] = user["runcmd"]
    script = check_of(user)
    assert script.rstrip("\n").splitlines()[-1] == \
        f"echo 'vtorque-ready {fixed.token(0)}' > /dev/ttyS0"
    assert spec.ready_line in script
    assert "eth0" not in script  # no NIC, nothing to check there


def test_no_empty_ssh_genkeytypes(make_specs) -> None:
    """cloud-init 22.4's schema refuses `ssh_genkeytypes: []` (the whole user-data is then
    reported invalid); with ssh_keys given it generates nothing anyway."""
    spec = make_specs("linux")[0]
    user = user_data(seed_documents(spec, SeedExtras(host_key_private="PRIVATE",
                                                     host_key_public="ssh-ed25519 AAAA")))
    assert "ssh_genkeytypes" not in user
    assert user["ssh_deletekeys"] is True
    assert user["ssh_keys"] == {"ed25519_private": "PRIVATE",
                                "ed25519_public": "ssh-ed25519 AAAA"}
    assert "ssh-ed25519 AAAA" in check_of(user)  # the pinned key is checked


@pytest.mark.parametrize("mode", ["network", "bridge"])
def test_documents_with_nic(make_specs, mode: str) -> None:
    spec = make_specs("linux", network={"mode": mode})[0]
    docs = seed_documents(spec)
    assert sorted(docs) == ["meta-data", "network-config", "user-data"]
    network = yaml.safe_load(docs["network-config"])
    assert network["version"] == 2
    nic = network["ethernets"]["nic0"]
    assert nic["match"] == {"macaddress": spec.nic.mac}
    assert nic["dhcp4"] is True and nic["set-name"] == "eth0"
    assert "ip -4 -o addr show dev eth0 | grep -q ' inet '" in check_of(user_data(docs))


def test_static_network_never_says_to_default(make_specs) -> None:
    """cloud-init 22.4 crashes on `to: default` ("Address default is not a valid ip
    address"): the default route is 0.0.0.0/0."""
    spec = with_static_nic(make_specs("linux", network={"mode": "bridge"})[0], mtu=9000)
    docs = seed_documents(spec)
    nic = yaml.safe_load(docs["network-config"])["ethernets"]["nic0"]
    assert nic["addresses"] == ["10.20.0.5/24"]
    assert nic["routes"] == [{"to": "0.0.0.0/0", "via": "10.20.0.1"}]
    assert nic["mtu"] == 9000 and "dhcp4" not in nic
    assert "default" not in docs["network-config"]
    script = check_of(user_data(docs))
    assert "grep -q ' 10.20.0.5/24 '" in script
    assert "grep -q 'via 10.20.0.1 '" in script
    assert '[ "$(cat /sys/class/net/eth0/mtu)" = 9000 ]' in script


def test_each_guest_gets_its_own_documents(make_specs) -> None:
    specs = make_specs("linux", "vms_per_node=2")
    a, b = (seed_documents(s) for s in specs)
    assert a["meta-data"] != b["meta-data"]
    assert specs[0].ready_token in a["user-data"] and specs[1].ready_token not in a["user-data"]


def test_hosts_is_written_whole_not_appended(make_specs) -> None:
    """cloud-init's update_etc_hosts runs after write_files: with manage_etc_hosts true it
    would re-render /etc/hosts from its template over appended lines; with Debian's false
    the guest's own name did not resolve (sudo complains). The seed writes the whole file
    and keeps cloud-init off it."""
    spec = make_specs("linux")[0]
    job = "10.20.0.5 vt12-0\n10.20.0.6 vt12-1\n"
    user = user_data(seed_documents(spec, SeedExtras(hosts=job)))
    assert user["manage_etc_hosts"] is False
    hosts = files_of(user)["/etc/hosts"]
    assert "append" not in hosts
    assert hosts["content"].startswith("127.0.0.1 localhost\n")
    assert hosts["content"].endswith(job)
    assert "127.0.1.1" not in hosts["content"]  # the job's line gives vt12-0 its address
    alone = files_of(user_data(seed_documents(spec)))["/etc/hosts"]["content"]
    assert "127.0.1.1 vt12-0\n" in alone
    assert "getent hosts vt12-0" in check_of(user)


def test_the_owner_account_is_the_nodes(make_specs) -> None:
    spec = make_specs("linux")[0]
    user = user_data(seed_documents(spec, SeedExtras(**OWNER)))
    assert user["users"] == [{
        "name": "alice", "uid": 23456, "primary_group": "23457", "no_user_group": True,
        "homedir": "/lustre/home/alice", "shell": "/bin/bash", "lock_passwd": True}]
    # useradd --gid needs the group: made first (bootcmd runs before users-groups), with
    # the node's gid, which cloud-init's own `groups` cannot set.
    [bootcmd] = user["bootcmd"]
    assert bootcmd[:2] == ["sh", "-c"]
    assert bootcmd[2].startswith("getent group 23457 >/dev/null || groupadd -g 23457 hpc ")
    script = check_of(user)
    for value in ("23456", "23457", "/lustre/home/alice"):
        assert f"= {value} ] || fail" in script


def test_an_owner_without_ids_still_gets_an_account(make_specs) -> None:
    spec = make_specs("linux")[0]
    user = user_data(seed_documents(spec, SeedExtras(user="bob")))
    assert user["users"] == [{"name": "bob", "shell": "/bin/bash", "lock_passwd": True}]
    assert "bootcmd" not in user


def test_files_the_owner_owns_wait_for_the_account(make_specs) -> None:
    """write_files runs before users-groups: a file owned by a user who does not exist yet
    fails, and so does every file listed after it. Such files are deferred."""
    spec = make_specs("linux")[0]
    extras = SeedExtras(**OWNER, user_key_private="PRIVATE USER KEY", known_hosts="k\n",
                        hostfile="vt12-0 slots=1\n", nodefile="vt12-0\n",
                        authorized_keys=(("alice", "ssh-ed25519 BBBB"),))
    user = user_data(seed_documents(spec, extras))
    owned = [f for f in user["write_files"] if f.get("owner", "root:root") != "root:root"]
    assert [f["path"] for f in owned] == ["/etc/vtorque/user_key"]
    key = owned[0]
    assert key["defer"] is True and key["owner"] == "alice" and key["permissions"] == "0600"
    assert key["content"] == "PRIVATE USER KEY"
    assert all(not f.get("defer") for f in user["write_files"] if f not in owned)
    files = files_of(user)
    assert files["/etc/vtorque/authorized_keys/alice"]["content"] == "ssh-ed25519 BBBB\n"
    for path in ("/etc/vtorque/known_hosts", "/etc/vtorque/hostfile",
                 "/etc/vtorque/nodefile", "/etc/ssh/ssh_config.d/00-vtorque.conf"):
        assert path in files
    script = check_of(user)
    assert '[ "$(stat -c %U:%a /etc/vtorque/user_key)" = alice:600 ]' in script
    assert "[ -s /etc/vtorque/authorized_keys/alice ]" in script


def test_sshd_dropin(make_specs) -> None:
    spec = make_specs("linux")[0]
    plain = files_of(user_data(seed_documents(spec)))["/etc/ssh/sshd_config.d/vtorque.conf"]
    # ssh_pwauth is applied by cloud-init's set-passwords, which lean images drop.
    assert plain["content"] == "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
    extras = SeedExtras(authorized_keys=(("alice", "ssh-ed25519 BBBB"),),
                        env=(("PBS_NODEFILE", "/etc/vtorque/nodefile"), ("A", "b")))
    dropin = files_of(user_data(seed_documents(spec, extras)))[
        "/etc/ssh/sshd_config.d/vtorque.conf"]["content"]
    assert "AuthorizedKeysFile /etc/vtorque/authorized_keys/%u\n" in dropin
    assert "SetEnv PBS_NODEFILE=/etc/vtorque/nodefile A=b\n" in dropin


def test_soft_roce_comes_before_the_check(make_specs) -> None:
    spec = replace(make_specs("linux", network={"mode": "network"})[0], rdma="soft-roce")
    setup = tuple(tuple(c) for c in RXE_COMMANDS)
    user = user_data(seed_documents(spec, SeedExtras(rdma_setup=setup, rdma_device="rxe0")))
    assert user["runcmd"][:-1] == [list(c) for c in RXE_COMMANDS]
    # runcmd is one sh script without -e: a failed modprobe does not stop the ready line;
    # the check does.
    assert "rdma link show rxe0/1 2>/dev/null | grep -q ACTIVE" in check_of(user)
    assert files_of(user)["/etc/security/limits.d/vtorque-rdma.conf"]["content"] == \
        "* - memlock unlimited\n"


def test_plain_files_for_the_test_guest(make_specs) -> None:
    spec = make_specs("linux")[0]
    extras = SeedExtras(hosts="10.0.0.2 vt12-0\n", host_key_private="HOSTPRIV",
                        host_key_public="ssh-ed25519 HOSTPUB",
                        authorized_keys=(("alice", "ssh-ed25519 USERPUB"),),
                        env=(("A", "b"),), hostfile="h\n", nodefile="n\n", user="alice",
                        user_uid=1000, user_key_private="USERPRIV", known_hosts="kh\n")
    docs = seed_documents(spec, extras)
    assert docs["vtorque-hosts"] == "10.0.0.2 vt12-0\n"
    assert docs["vtorque-ssh-host-key"] == "HOSTPRIV"
    assert docs["vtorque-ssh-host-key.pub"] == "ssh-ed25519 HOSTPUB\n"
    assert docs["vtorque-authorized-keys"] == "alice ssh-ed25519 USERPUB\n"
    assert docs["vtorque-known-hosts"] == "kh\n"
    assert docs["vtorque-user-key"] == "alice\nUSERPRIV"
    assert docs["vtorque-hostfile"] == "h\n" and docs["vtorque-nodefile"] == "n\n"
    assert docs["vtorque-env"] == "A=b\n"


@pytest.mark.parametrize("extras", [
    SeedExtras(user="-rf"), SeedExtras(user="a b"), SeedExtras(user="alice", user_uid=0),
    SeedExtras(user="alice", user_gid=-5), SeedExtras(user="alice", user_uid=True),
    SeedExtras(user="alice", user_home="home/alice"),
    SeedExtras(user="alice", user_home="/home/../etc"),
    SeedExtras(user="alice", user_home="/home/al ice"),
    SeedExtras(user="alice", user_group="x;y", user_gid=5),
    SeedExtras(user_uid=1000),
    SeedExtras(authorized_keys=(("bad name", "ssh-ed25519 K"),)),
])
def test_bad_owner_fields_are_refused(make_specs, extras: SeedExtras) -> None:
    with pytest.raises(Unsupported, match="^seed: "):
        seed_documents(make_specs("linux")[0], extras)


# --- the guest's check, run by sh against fake guest state ---------------------------------

class FakeGuest:
    """The commands and files the check reads, under tmp_path: the console, cloud-init's
    status.json, /proc/net/tcp; hostname and getent on PATH."""

    LISTENING = "  0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 0\n"

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dir = tmp_path
        self.console = tmp_path / "ttyS0"
        self.status = tmp_path / "status.json"
        self.tcp = tmp_path / "tcp"
        self.console.write_text("")
        self.set_status([])
        self.tcp.write_text("  sl  local_address rem_address   st\n" + self.LISTENING)
        monkeypatch.setattr(seed_mod, "GUEST_CONSOLE", str(self.console))
        monkeypatch.setattr(seed_mod, "CLOUD_INIT_STATUS", str(self.status))
        monkeypatch.setattr(seed_mod, "PROC_NET_TCP", str(self.tcp))
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        self.home = tmp_path / "home"
        self.home.mkdir()
        self.tool("hostname", 'echo "${FAKE_HOSTNAME:-vt12-0}"')
        self.tool("getent", 'case "$1" in\n'
                  '  hosts) echo "10.20.0.5 $2" ;;\n'
                  '  passwd) [ -n "$FAKE_PASSWD" ] && echo "$FAKE_PASSWD" ;;\n'
                  '  *) exit 2 ;;\nesac')

    def tool(self, name: str, body: str) -> None:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body + "\n")
        path.chmod(0o755)

    def set_status(self, init_errors: list[str]) -> None:
        empty = {"errors": [], "start": 1.0, "finished": 2.0}
        self.status.write_text(json.dumps({"v1": {
            "init-local": empty, "init": {**empty, "errors": init_errors},
            "modules-config": empty, "modules-final": {"errors": ["not yet"]},
            "stage": "modules-final", "datasource": "DataSourceNoCloud"}}))

    def run(self, script: str, **env: str) -> str:
        path = f"{self.bin}:/usr/bin:/bin"
        subprocess.run(["/bin/sh", "-c", script], env={"PATH": path, **env},
                       capture_output=True, text=True, timeout=60, check=False)
        return self.console.read_text()


@pytest.fixture
def guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeGuest:
    return FakeGuest(tmp_path, monkeypatch)


def test_check_prints_the_ready_line_when_all_is_there(make_specs, guest: FakeGuest) -> None:
    spec = make_specs("linux")[0]
    assert guest.run(check_of(user_data(seed_documents(spec)))) == spec.ready_line + "\n"


def test_check_reports_a_failed_cloud_init_module(make_specs, guest: FakeGuest) -> None:
    spec = make_specs("linux")[0]
    guest.set_status(["('users-groups', KeyError('getpwnam(): name not found'))"])
    out = guest.run(check_of(user_data(seed_documents(spec))))
    assert out.startswith("vtorque-error cloud-init failed: ('users-groups', KeyError(")
    assert "vtorque-ready" not in out
    assert len(out.splitlines()) == 1


def test_check_reports_a_wrong_hostname(make_specs, guest: FakeGuest) -> None:
    spec = make_specs("linux")[0]
    out = guest.run(check_of(user_data(seed_documents(spec))), FAKE_HOSTNAME="localhost")
    assert out == "vtorque-error hostname is not vt12-0\n"


def test_check_reports_the_owner_with_another_uid(make_specs, guest: FakeGuest) -> None:
    spec = make_specs("linux")[0]
    script = check_of(user_data(seed_documents(spec, SeedExtras(**OWNER))))
    home = OWNER["user_home"]
    wrong = f"alice:x:1000:23457::{home}:/bin/bash"
    out = guest.run(script, FAKE_PASSWD=wrong)
    assert out == "vtorque-error account: alice has the wrong uid, not 23456\n"
    assert guest.run(script).endswith("vtorque-error account: no user alice\n")


def test_check_waits_for_sshd(make_specs, guest: FakeGuest, monkeypatch) -> None:
    monkeypatch.setattr(seed_mod, "CHECK_WAIT_SECONDS", 1)
    guest.tcp.write_text("  sl  local_address rem_address   st\n")
    spec = make_specs("linux")[0]
    out = guest.run(check_of(user_data(seed_documents(spec))))
    assert out == "vtorque-error sshd: not listening on port 22\n"


def read_iso(path: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        volume = iso.pvd.volume_identifier.decode().strip()
        by_rr, by_joliet = {}, {}
        for name in ("meta-data", "user-data", "network-config"):
            for store, kwargs in ((by_rr, {"rr_path": f"/{name}"}),
                                  (by_joliet, {"joliet_path": f"/{name}"})):
                out = io.BytesIO()
                try:
                    iso.get_file_from_iso_fp(out, **kwargs)
                except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                    continue
                store[name] = out.getvalue().decode()
        return volume, by_rr, by_joliet
    finally:
        iso.close()


def test_write_seed_iso_reads_back(tmp_path: Path, make_specs) -> None:
    spec = make_specs("linux", network={"mode": "bridge"})[0]
    docs = seed_documents(spec)
    (tmp_path / "job").mkdir()
    path = tmp_path / "job" / "seed.iso"
    write_seed_iso(str(path), docs)
    volume, by_rr, by_joliet = read_iso(path)
    assert volume == "cidata"
    assert by_rr == docs
    assert by_joliet == docs
    assert yaml.safe_load(by_rr["user-data"])["hostname"] == spec.hostname
    assert yaml.safe_load(by_rr["meta-data"])["instance-id"] == spec.name
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o400     # it holds the guest's private host key
    assert os.listdir(tmp_path / "job") == ["seed.iso"]  # no temp file left


def test_write_seed_iso_mode_ignores_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_seed_iso(str(tmp_path / "s.iso"), {"meta-data": "a: 1\n"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "s.iso").st_mode) == 0o400


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_write_seed_iso_belongs_to_the_guests_qemu_identity(tmp_path: Path) -> None:
    write_seed_iso(str(tmp_path / "s.iso"), {"meta-data": "a: 1\n"}, uid=4242,
                   gid=NOBODY_GID)
    st = os.stat(tmp_path / "s.iso")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4242, NOBODY_GID, 0o400)


def test_write_seed_iso_replaces_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "seed.iso"
    link.symlink_to(victim)
    write_seed_iso(str(link), {"meta-data": "a: 1\n"})
    assert not link.is_symlink()
    assert victim.read_text() == "precious"
    assert read_iso(link)[1] == {"meta-data": "a: 1\n"}


def test_write_seed_iso_refuses_a_planted_temp_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "seed.iso.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_seed_iso(str(tmp_path / "seed.iso"), {"meta-data": "a: 1\n"})
    assert victim.read_text() == "precious"
    assert not (tmp_path / "seed.iso").exists()


# --- the job's shares and /data ---------------------------------------------------------

SHARES = (ShareSpec("vtshare0", "/lustre/home/alice", "/lustre/home/alice", False, "home"),
          ShareSpec("vtshare1", "/scratch/a b", "/scratch/a b", True, "site"))


def with_mounts(spec: GuestSpec) -> GuestSpec:
    return replace(spec, shares=SHARES, owner_uid=23456, owner_gid=23457)


def test_shares_and_data_are_mounted_in_the_first_stage(make_specs) -> None:
    """bootcmd, after the owner's group and before users-groups makes the account: a
    shared home is there when the account is created, and nothing writes into it as
    root."""
    spec = with_mounts(make_specs("linux", "disk=1G")[0])
    user = user_data(seed_documents(spec, SeedExtras(**OWNER)))
    group, mount = user["bootcmd"]
    assert "groupadd -g 23457" in group[2]
    assert mount[:2] == ["sh", "-c"]
    script = mount[2]
    assert ("mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=mmap,"
            "nosuid,nodev vtshare0 /lustre/home/alice") in script
    assert "nodev,ro vtshare1 '/scratch/a b'" in script
    assert script.index("vtshare0") < script.index("vtshare1")
    assert "vtorque-data" in script and "mount -t ext4 -o nosuid,nodev" in script
    assert "mountpoint -q /data" in check_of(user)
    docs = seed_documents(spec, SeedExtras(**OWNER))
    assert docs[mounts.TEST_GUEST_FILE] == (
        "9p vtshare0 rw /lustre/home/alice\n9p vtshare1 ro /scratch/a b\n"
        "data vtorque-data - /data\n")


def test_no_mounts_no_bootcmd_step(make_specs) -> None:
    spec = make_specs("linux")[0]
    assert "bootcmd" not in user_data(seed_documents(spec))
    assert mounts.TEST_GUEST_FILE not in seed_documents(spec)


def test_hostile_share_paths_stay_words(make_specs, tmp_path: Path) -> None:
    """A working directory named like shell code is only ever a word (the guest's root
    runs this script)."""
    evil = "/w/$(touch pwned)`touch pwned2`;touch pwned3"
    spec = replace(make_specs("linux")[0],
                   shares=(ShareSpec("vtshare0", evil, evil, False, "workdir"),))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("modprobe", "mkdir"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "mount").write_text('#!/bin/sh\necho "mount: $# args, last: $6" >&2; '
                                   "exit 32\n")
    (bin_dir / "mount").chmod(0o755)
    log = tmp_path / "mounts.log"
    script = mounts.mount_script(spec).replace(mounts.MOUNT_LOG, str(log))
    subprocess.run(["/bin/sh", "-c", script], env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
                   cwd=tmp_path, timeout=30, check=False)
    assert log.read_text() == f"{evil}: mount: 6 args, last: {evil}\n"
    assert not list(tmp_path.glob("pwned*"))


def test_check_reports_a_share_that_is_not_mounted(make_specs, guest: FakeGuest,
                                                   monkeypatch) -> None:
    log = guest.dir / "mounts.log"
    log.write_text("/scratch/a b: mount: unknown filesystem type '9p'\n")
    monkeypatch.setattr(mounts, "MOUNT_LOG", str(log))
    guest.tool("mountpoint", 'case "$2" in /lustre/home/alice) exit 0 ;; esac; exit 1')
    spec = with_mounts(make_specs("linux")[0])
    out = guest.run(check_of(user_data(seed_documents(spec))))
    assert out == ("vtorque-error share: /scratch/a b is not mounted: /scratch/a b: mount: "
                   "unknown filesystem type '9p'\n")


def test_check_wants_data_owned_by_the_owner(make_specs, guest: FakeGuest) -> None:
    guest.tool("mountpoint", "exit 0")
    guest.tool("stat", '[ "$2 $3" = "%u /data" ] && { echo "$FAKE_DATA_UID"; exit 0; }; '
               'exec /usr/bin/stat "$@"')
    spec = replace(make_specs("linux", "disk=1G")[0], owner_uid=23456, owner_gid=23457)
    script = check_of(user_data(seed_documents(spec)))
    assert guest.run(script, FAKE_DATA_UID="0") == \
        "vtorque-error data disk: /data is not owned by uid 23456\n"
    guest.console.write_text("")
    assert guest.run(script, FAKE_DATA_UID="23456") == spec.ready_line + "\n"
