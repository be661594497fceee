"""Unit tests of vtorque.vm.identity: who QEMU runs as and what that identity may open,
tried as that identity (root runs these; the identity is the system's `nobody`)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from vtorque.errors import NodeError
from vtorque.vm import identity

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another uid needs root")


def test_the_owners_identity_is_its_uid_and_primary_group() -> None:
    nobody = pwd.getpwnam("nobody")
    owner = identity.of_owner("nobody")
    assert (owner.uid, owner.gid, owner.name, owner.owner) == (nobody.pw_uid, nobody.pw_gid,
                                                               "nobody", True)
    assert owner.label == f"+{nobody.pw_uid}:+{nobody.pw_gid}"


def test_root_and_unknown_owners_are_refused() -> None:
    with pytest.raises(NodeError, match="must not be root"):
        identity.of_owner("root")
    with pytest.raises(NodeError, match="no account on this node"):
        identity.of_owner("no-such-user-vt")


def test_kvm_device_rules(tmp_path: Path) -> None:
    owner = identity.Identity(4242, 4242, "nobody", True)
    device = tmp_path / "kvm"
    device.write_text("")
    os.chown(device, 0, 107) if os.geteuid() == 0 else None
    device.chmod(0o660)
    if os.geteuid() == 0:
        assert "not usable by uid 4242" in identity.kvm_problem(owner, str(device))
        assert 'MODE="0666"' in identity.kvm_problem(owner, str(device))
    device.chmod(0o666)
    assert identity.kvm_problem(owner, str(device)) is None
    assert "No such file" in identity.kvm_problem(owner, str(tmp_path / "none"))


@needs_root
def test_paths_are_tried_as_the_identity(tmp_path: Path) -> None:
    """What root could open does not count: the child runs with the identity's uid, gid
    and supplementary groups, as libvirt starts QEMU."""
    nobody = identity.of_owner("nobody")
    base = Path("/var/tmp") / f"vt-identity-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        public = base / "public"
        public.write_text("x")
        public.chmod(0o644)
        private = base / "private"
        private.write_text("x")
        private.chmod(0o600)
        shut = base / "shut"
        shut.mkdir(mode=0o700)
        spaced = base / "a dir; $(touch pwned)"
        spaced.mkdir(mode=0o755)
        asked = [(identity.READ, str(public)), (identity.READ, str(private)),
                 (identity.LIST, str(shut)), (identity.ENTER, str(base)),
                 (identity.LIST, str(spaced)), (identity.READ, str(base / "missing")),
                 (identity.LIST, str(public))]
        assert identity.unusable(nobody, asked) == [1, 2, 5, 6]
        assert not list(base.glob("pwned")) and not Path("pwned").exists()
        assert identity.unusable(nobody, []) == []
    finally:
        for path in sorted(base.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        base.rmdir()


def test_groups_are_the_names_own() -> None:
    owner = identity.of_owner("nobody")
    assert owner.gid in identity.groups(owner)
    ghost = identity.Identity(4999, 4999, "no-such-user-vt", True)
    assert identity.groups(ghost) == [4999]


def test_the_job_files_modes_are_private() -> None:
    # The modes vm/ gives a job's files (seeds 0400, disks 0600): nobody else can read.
    for mode in (0o400, 0o600):
        assert not mode & (stat.S_IRWXG | stat.S_IRWXO)
