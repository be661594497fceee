"""Per-job SSH trust: the job's user key pair and each guest's host key.

Keys are derived, not stored: HMAC-SHA256(site secret, purpose) seeds an Ed25519 key, the
purpose naming the job (and the guest's rank for host keys). Every node of the cluster
holds the same root-only secret file (like munge's key), so the mother superior can write
known_hosts with every guest's pinned host key, and every node can authorize the job's
user key in its guests, without the nodes exchanging a single key. A job's keys say
nothing about another job's (HMAC is one-way), and nothing is left to delete at teardown
but the copies handed to the job.

A job id alone does not name one job for ever: Slurm's ids wrap and restart with a new
database, a reinstalled Torque server counts from 0 again, two clusters may share a
secret. Keys of the id alone would then repeat for another job, and its owner's old
private key would open the new job's guests. So the purpose is a KeyScope: the id, the
owner's uid and the batch server's creation time of the job, which every node reads from
the same record and which a reused id does not repeat.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vtorque.errors import NodeError

MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 1 << 16


@dataclass(frozen=True)
class KeyScope:
    """The one job a key belongs to: what a reused job id does not repeat."""
    job_id: str
    uid: int           # the job owner's uid
    created: int       # the batch server's creation (submit) time, seconds since the epoch

    def purpose(self, what: str) -> str:
        # No field can hold '/' (job ids never do, the others are numbers).
        return f"vtorque/v2/{what}/{self.job_id}/{self.uid}/{self.created}"


def scope_for(job_id: str, user: str, created: int | None, uid: int | None = None
              ) -> KeyScope:
    """The KeyScope of a job as the batch server reported it; the uid from the server when
    it names one (Slurm), else the owner's account on this node. NodeError when either is
    unknown: keys of the id alone could belong to an earlier job of the same id."""
    from vtorque import jobid
    jobid.check(job_id, "job")
    if created is None or isinstance(created, bool) or not isinstance(created, int):
        raise NodeError(f"the batch server gives no creation time for job {job_id}: its SSH "
                        "keys cannot be bound to this job alone")
    if uid is None:
        import pwd
        try:
            uid = pwd.getpwnam(user).pw_uid
        except (KeyError, TypeError, ValueError):
            raise NodeError(f"the job's owner of job {job_id} has no account on this node"
                            ) from None
    return KeyScope(job_id, uid, created)


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str      # "-----BEGIN OPENSSH PRIVATE KEY-----..."
    public: str               # "ssh-ed25519 AAAA..."


def read_secret(path: str) -> bytes:
    """The site secret: root's file, mode 0600 or stricter, at least 32 bytes, in
    directories only root can change (files.read_trusted)."""
    from vtorque.files import read_trusted
    try:
        secret = read_trusted(path, "site secret", limit=MAX_SECRET_BYTES, private=True)
    except FileNotFoundError:
        raise NodeError(f"site secret {path} is missing (config key secret_file; create it "
                        "with 32 random bytes, mode 0600, identical on every node)") from None
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


def user_key(secret: bytes, job: KeyScope) -> KeyPair:
    """The key the job's owner logs into the job's guests with."""
    return derive(secret, job.purpose("user"))


def host_key(secret: bytes, job: KeyScope, rank: int) -> KeyPair:
    """The SSH host key of guest `rank` of the job."""
    return derive(secret, f"{job.purpose('host')}/{rank}")
