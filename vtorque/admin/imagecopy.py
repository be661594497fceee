"""Bringing a file into the image pool for `vtorque image add`: copied (holes kept) and
hashed in one pass, published under its final name only if nothing has that name yet,
and, with --convert, turned into a standalone qcow2 by qemu-img running as nobody on a
private copy (a VMDK can name other files; nobody can read only what anyone may)."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import stat
import tempfile

from vtorque import proc
from vtorque.errors import VtorqueError
from vtorque.files import link_new

_CHUNK = 1 << 20
_BLOCK = 64 << 10                    # runs of zeros this long become holes
CONVERT_TIMEOUT = 3600.0


def open_source(path: str) -> int:
    """A descriptor of the regular file an admin names (a symlink to one is fine)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise VtorqueError(f"cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise VtorqueError(f"{path} is not a regular file")
    return fd


def copy_hashing(src_fd: int, directory: str, name: str) -> tuple[str, str, int]:
    """Copy from src_fd into `directory`/`name` (root's, 0644); (path, sha256, size).
    Runs of zeros become holes. The name must be free: an existing file is never
    replaced (VtorqueError)."""
    final = os.path.join(directory, name)
    if os.path.lexists(final):
        raise VtorqueError(f"{final} exists already")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vtorque-add-")
    digest, size = hashlib.sha256(), 0
    try:
        os.lseek(src_fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "wb") as out:
            while chunk := os.read(src_fd, _CHUNK):
                digest.update(chunk)
                size += len(chunk)
                for start in range(0, len(chunk), _BLOCK):
                    block = chunk[start:start + _BLOCK]
                    if block.count(0) == len(block):
                        out.seek(len(block), os.SEEK_CUR)
                    else:
                        out.write(block)
            out.truncate(size)
            out.flush()
            os.fsync(out.fileno())
            os.fchmod(out.fileno(), 0o644)
        link_new(tmp, final)             # never replaces: fails if the name was taken
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return final, digest.hexdigest(), size


def convert(src_fd: int, source_format: str, work_root: str) -> tuple[int, str]:
    """A standalone qcow2 made from the source by qemu-img, as nobody, in a private
    directory under work_root: (an open descriptor of the result, the directory to
    remove afterwards)."""
    nobody = pwd.getpwnam("nobody")
    os.makedirs(work_root, mode=0o711, exist_ok=True)
    os.chmod(work_root, 0o711)
    work = tempfile.mkdtemp(dir=work_root, prefix="convert-")
    try:
        os.chown(work, nobody.pw_uid, nobody.pw_gid)
        os.chmod(work, 0o700)
        source = os.path.join(work, "source")
        out_fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(out_fd, "wb") as out:
            os.lseek(src_fd, 0, os.SEEK_SET)
            shutil.copyfileobj(os.fdopen(os.dup(src_fd), "rb"), out, _CHUNK)
        os.chown(source, nobody.pw_uid, nobody.pw_gid)
        result = os.path.join(work, "image.qcow2")
        qemu_img = shutil.which("qemu-img", path=proc.SAFE_PATH)
        if qemu_img is None:
            raise VtorqueError("qemu-img not found (apt-get install qemu-utils)")
        argv = ["/usr/bin/setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
                "--clear-groups", "--no-new-privs", "--", qemu_img, "convert", "-q",
                "-f", source_format, "-O", "qcow2", "source", "image.qcow2"]
        done = proc.run(argv, timeout=CONVERT_TIMEOUT, check=False, cwd=work)
        if done.returncode != 0:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else \
                f"exit status {done.returncode}"
            raise VtorqueError(f"qemu-img convert -f {source_format} failed: {last}")
        fd = os.open(result, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise VtorqueError("qemu-img convert made no regular file")
        return fd, work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
