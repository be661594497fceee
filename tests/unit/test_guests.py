"""Unit tests of vtorque.prologue.guests: the job's shares as the node sees them, and the
owner's files the job shell reads (vm_prologue, vm_epilogue, every guest)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from vtorque.errors import Unsupported
from vtorque.journal import JobPaths, Journal
from vtorque.mpi import hostfile, sshkeys
from vtorque.prologue import guests

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to the owner needs root")


def test_job_shares_are_the_real_paths_of_workdir_and_home(make_config, tmp_path: Path,
                                                           monkeypatch) -> None:
    real = tmp_path / "real work"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    home = tmp_path / "home"
    home.mkdir()
    from types import SimpleNamespace
    monkeypatch.setattr(guests, "pwd", SimpleNamespace(
        getpwnam=lambda name: SimpleNamespace(pw_dir=str(home))))
    cfg = make_config({"batch": {"shares": ["/workspace", "/opt/apps:ro"]}})
    shares = guests.job_shares(cfg, "nobody", str(link))
    by_origin = {s.origin: (s.source, s.readonly) for s in shares}
    assert by_origin["workdir"] == (str(real), False)       # where QEMU opens it
    assert by_origin["home"] == (str(home), False)
    assert [(s.source, s.readonly) for s in shares if s.origin == "site"] == [
        ("/workspace", False), ("/opt/apps", True)]
    assert all(s.source == s.target for s in shares)
    assert guests.job_shares(cfg, "nobody", None)[0].origin != "workdir"


def test_a_workdir_that_would_hide_the_guests_system_is_the_users_fault(make_config) -> None:
    with pytest.raises(Unsupported, match="working directory '/etc' cannot be shared"):
        guests.job_shares(make_config(), "nobody", "/etc")


def journal_of(cfg, job_id: str, **start) -> JobPaths:
    paths = JobPaths.for_job(job_id, cfg.state_dir, cfg.ramdisk_dir)
    os.makedirs(paths.job_dir)
    Journal(paths.journal).record("job-start", job_id=job_id, guests=[], **start)
    return paths


def test_vm_scripts_come_from_the_journal(make_config) -> None:
    cfg = make_config()
    paths = journal_of(cfg, "8", vm_prologue="/opt/pre.sh", vm_epilogue=None)
    assert guests.vm_scripts(paths) == {"vm-prologue": "/opt/pre.sh\n", "vm-epilogue": ""}
    empty = JobPaths.for_job("9", cfg.state_dir, cfg.ramdisk_dir)
    assert guests.vm_scripts(empty) == {"vm-prologue": "", "vm-epilogue": ""}


@needs_root
def test_the_owners_files_name_the_scripts_and_every_guest(make_config, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    cfg = make_config({"secret_file": str(secret)})
    journal_of(cfg, "8", vm_prologue="/opt/pre.sh", vm_epilogue="/opt/post.sh")
    entries = [hostfile.GuestEntry(rank=r, hostname=f"vt8-{r}", address=f"10.0.0.{r + 5}",
                                   slots=1, host_key=None) for r in range(2)]
    scope = sshkeys.KeyScope("8", 65534, 1_700_000_000)
    directory = Path(guests.write_user_files("8", cfg, "nobody", entries, scope))
    # The owner's private key is the job's, bound to its scope.
    from cryptography.hazmat.primitives import serialization
    private = serialization.load_ssh_private_key(
        (directory / "id_ed25519").read_bytes(), password=None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    assert public == sshkeys.user_key(secret.read_bytes(), scope).public
    assert (directory / "vm-prologue").read_text() == "/opt/pre.sh\n"
    assert (directory / "vm-epilogue").read_text() == "/opt/post.sh\n"
    assert (directory / "guests").read_text() == "vt8-0 10.0.0.5\nvt8-1 10.0.0.6\n"
    nobody = pwd.getpwnam("nobody")
    assert (directory / "guests").stat().st_uid == nobody.pw_uid
