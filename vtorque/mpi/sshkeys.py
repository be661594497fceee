"""Per-job SSH trust: the job's user key pair and each guest's host key.

Keys are derived, not stored: HMAC-SHA256(site secret, purpose) seeds an Ed25519 key, the
purpose naming the job (and the guest's rank for host keys). Every node of the cluster
holds the same root-only secret file (like munge's key), so the mother superior can write
known_hosts with every guest's pinned host key, and every node can authorize the job's
user key in its guests, without the nodes exchanging a single key. A job's keys say
nothing about another job's (HMAC is one-way), and nothing is left to delete at teardown
but the copies handed to the job.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vtorque.errors import NodeError

MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str      # "-----BEGIN OPENSSH PRIVATE KEY-----..."
    public: str               # "ssh-ed25519 AAAA..."


def read_secret(path: str) -> bytes:
    """The site secret: a root-owned file, mode 0600 or stricter, at least 32 bytes."""
    try:
        # O_NONBLOCK: a FIFO at the path must not hang the hook (no effect on files).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NodeError(f"site secret {path} is missing (config key secret_file; create it "
                        "with 32 random bytes, mode 0600, identical on every node)") from None
    except OSError as exc:
        raise NodeError(f"cannot read site secret {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NodeError(f"site secret {path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        if st.st_uid != 0 or st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise NodeError(f"site secret {path} must be owned by root with mode 0600")
        try:
            secret = handle.read()
        except OSError as exc:
            raise NodeError(f"cannot read site secret {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise NodeError(f"site secret {path} is shorter than {MIN_SECRET_BYTES} bytes")
    return secret


def derive(secret: bytes, purpose: str) -> KeyPair:
    seed = hmac.new(secret, purpose.encode(), hashlib.sha256).digest()
    key = Ed25519PrivateKey.from_private_bytes(seed)
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return KeyPair(private, public)


def user_key(secret: bytes, job_id: str) -> KeyPair:
    """The key the job's owner logs into the job's guests with."""
    return derive(secret, f"vtorque/user/{job_id}")


def host_key(secret: bytes, job_id: str, rank: int) -> KeyPair:
    """The SSH host key of guest `rank` of the job."""
    return derive(secret, f"vtorque/host/{job_id}/{rank}")
