"""Unit tests of vtorque.mpi.sshkeys: keys derived from the site secret, and the secret's
own checks (the file every node's root trusts for the job's SSH keys)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from vtorque.errors import NodeError
from vtorque.mpi import sshkeys

SECRET = b"s" * 32
OTHER = b"t" * 32
SSH_KEYGEN = "/usr/bin/ssh-keygen"


def scope(job_id: str) -> sshkeys.KeyScope:
    """One job's key scope (uid and creation time fixed: only the id varies here)."""
    return sshkeys.KeyScope(job_id, 1001, 1_700_000_000)


def raw_private(pair: sshkeys.KeyPair) -> bytes:
    key = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def public_of(pair: sshkeys.KeyPair) -> str:
    key = serialization.load_ssh_private_key(pair.private_openssh.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


# --- derivation -----------------------------------------------------------------------------

def test_same_secret_and_job_give_the_same_keys() -> None:
    a, b = sshkeys.user_key(SECRET, scope("12.head")), sshkeys.user_key(SECRET, scope("12.head"))
    assert a.public == b.public
    assert raw_private(a) == raw_private(b)
    h1 = sshkeys.host_key(SECRET, scope("12.head"), 3)
    h2 = sshkeys.host_key(SECRET, scope("12.head"), 3)
    assert h1.public == h2.public and raw_private(h1) == raw_private(h2)


def test_keys_differ_by_job_rank_secret_and_purpose() -> None:
    publics = {
        sshkeys.user_key(SECRET, scope("12.head")).public,
        sshkeys.user_key(SECRET, scope("13.head")).public,
        sshkeys.user_key(SECRET, scope("12.other")).public,
        sshkeys.user_key(OTHER, scope("12.head")).public,
        sshkeys.host_key(SECRET, scope("12.head"), 0).public,
        sshkeys.host_key(SECRET, scope("12.head"), 1).public,
        sshkeys.host_key(SECRET, scope("13.head"), 0).public,
        sshkeys.host_key(OTHER, scope("12.head"), 0).public,
    }
    assert len(publics) == 8


@settings(database=None, deadline=None, max_examples=40)
@given(job=st.from_regex(r"[0-9][A-Za-z0-9.\[\]_-]{0,20}", fullmatch=True),
       rank=st.integers(0, 4095))
def test_private_key_parses_and_matches_the_public_line(job: str, rank: int) -> None:
    for pair in (sshkeys.user_key(SECRET, scope(job)), sshkeys.host_key(SECRET, scope(job), rank)):
        assert pair.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert pair.public.startswith("ssh-ed25519 ")
        assert public_of(pair) == pair.public
        pub = serialization.load_ssh_public_key(pair.public.encode())
        assert isinstance(pub, Ed25519PublicKey)
        # The public key verifies what the private key signs.
        key = serialization.load_ssh_private_key(pair.private_openssh.encode(), None)
        pub.verify(key.sign(b"vtorque"), b"vtorque")


@pytest.mark.skipif(not os.path.exists(SSH_KEYGEN), reason=f"{SSH_KEYGEN} not installed")
def test_ssh_keygen_reads_the_private_key(tmp_path: Path) -> None:
    for pair in (sshkeys.user_key(SECRET, scope("5.h")), sshkeys.host_key(SECRET, scope("5.h"), 2)):
        path = tmp_path / "id_ed25519"
        path.write_text(pair.private_openssh)
        os.chmod(path, 0o600)
        done = subprocess.run([SSH_KEYGEN, "-y", "-f", str(path)], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[:2] == pair.public.split()[:2]
        path.unlink()


# --- the site secret --------------------------------------------------------------------------

def write_secret(path: Path, data: bytes = SECRET, mode: int = 0o600) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def test_read_secret_returns_the_bytes(tmp_path: Path) -> None:
    assert sshkeys.read_secret(write_secret(tmp_path / "secret")) == SECRET
    assert sshkeys.read_secret(write_secret(tmp_path / "ro", b"x" * 64, 0o400)) == b"x" * 64


def test_read_secret_missing(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="is missing.*secret_file"):
        sshkeys.read_secret(str(tmp_path / "nope"))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o660, 0o644])
def test_read_secret_refuses_group_or_other_access(tmp_path: Path, mode: int) -> None:
    path = write_secret(tmp_path / "secret", mode=mode)
    with pytest.raises(NodeError, match="site secret: .* (readable|writable) by group or "
                                        "others"):
        sshkeys.read_secret(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_read_secret_refuses_a_file_not_owned_by_root(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "secret")
    os.chown(path, 65534, 65534)
    with pytest.raises(NodeError, match="owned by uid 65534, not root"):
        sshkeys.read_secret(path)


def test_read_secret_refuses_a_short_secret(tmp_path: Path) -> None:
    path = write_secret(tmp_path / "secret", b"x" * 31)
    with pytest.raises(NodeError, match="shorter than 32 bytes"):
        sshkeys.read_secret(path)
    assert sshkeys.read_secret(write_secret(tmp_path / "ok", b"x" * 32)) == b"x" * 32


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_read_secret_never_follows_a_symlink_a_user_can_change(tmp_path: Path) -> None:
    """A link root made in root's directory is root's choice; one a user owns in a
    directory others can write (/tmp), or one into a user's directory, is refused."""
    target = write_secret(tmp_path / "real")
    link = tmp_path / "secret"
    link.symlink_to(target)
    assert sshkeys.read_secret(str(link)) == SECRET
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    planted = sticky / "secret"
    planted.symlink_to(target)
    os.chown(planted, 65534, 65534, follow_symlinks=False)
    with pytest.raises(NodeError, match="owned by uid 65534 in a directory others can"):
        sshkeys.read_secret(str(planted))
    users = tmp_path / "users"
    users.mkdir()
    os.chown(users, 65534, 65534)
    (tmp_path / "via").symlink_to(users)
    with pytest.raises(NodeError, match="owned by uid 65534, not root"):
        sshkeys.read_secret(str(tmp_path / "via" / "secret"))


def test_read_secret_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "secret"
    directory.mkdir(mode=0o700)
    with pytest.raises(NodeError, match="not a regular file"):
        sshkeys.read_secret(str(directory))


def test_read_secret_does_not_hang_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "secret"
    os.mkfifo(fifo, 0o600)
    script = ("import sys; from vtorque.mpi import sshkeys; from vtorque.errors import "
              "NodeError\ntry:\n    sshkeys.read_secret(sys.argv[1])\nexcept NodeError as e:"
              "\n    print('refused', e)\n")
    done = subprocess.run([sys.executable, "-c", script, str(fifo)], capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused") and "not a regular file" in done.stdout, \
        done.stdout
