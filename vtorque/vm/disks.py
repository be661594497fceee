"""Guest disks: qcow2 overlays on authorized base images, and rank 0's data disk.

Every disk is made by root in the job's root-owned directory (nobody else can plant a
link there), then handed to the job's QEMU identity, mode 0600: readable by that identity
alone. Base images stay root-owned and untouched.

The data disk (request key disk) is a sparse raw file holding an ext4 file system made
here, before the guest starts (mke2fs into a plain file: no loop device, no tool in the
guest), its root directory owned by the job owner: every image that mounts ext4 gets a
ready /data, whatever it runs at boot. Raw, not qcow2: the file system is written into
the file directly, and the file stays sparse (the guest's TRIM punches holes).
"""

from __future__ import annotations

import os

from vtorque import proc
from vtorque.vm.spec import DATA_LABEL, GuestSpec

QEMU_IMG = "/usr/bin/qemu-img"
MKE2FS = "/sbin/mke2fs"


def overlay_argv(base: str, base_format: str, overlay: str) -> list[str]:
    """qemu-img argv for a copy-on-write overlay; the base format is always stated, so
    qemu never probes it (a raw image with a qcow2 header stays raw)."""
    return [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, overlay]


def data_disk_argv(path: str, owner: tuple[int, int]) -> list[str]:
    """mke2fs argv for the data disk's ext4 file system in an existing file: no reserved
    blocks (it is all the user's), inode tables and journal initialised lazily (a fresh
    sparse file reads as zeros), no discard pass over the fresh file."""
    uid, gid = owner
    return [MKE2FS, "-q", "-F", "-t", "ext4", "-L", DATA_LABEL, "-m", "0",
            "-E", f"root_owner={uid}:{gid},lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            path]


def _make_sparse(path: str, size_mib: int) -> None:
    """A new sparse file of `size_mib` MiB; never through a planted link or file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.ftruncate(fd, size_mib << 20)
    finally:
        os.close(fd)


def create_disks(spec: GuestSpec, timeout: float) -> list[str]:
    """Create the guest's overlay and data disk, owned by its QEMU identity, mode 0600.
    Returns the paths made (for the journal)."""
    made = []
    if spec.overlay is not None:
        proc.run(overlay_argv(spec.base_image, spec.base_format, spec.overlay.path),
                 timeout=timeout)
        made.append(spec.overlay.path)
    if spec.scratch is not None:
        _make_sparse(spec.scratch.path, spec.scratch_mib)
        made.append(spec.scratch.path)
        owner = (spec.owner_uid or 0, spec.owner_gid or 0)
        proc.run(data_disk_argv(spec.scratch.path, owner), timeout=timeout)
    for path in made:
        os.chown(path, spec.qemu_uid, spec.qemu_gid, follow_symlinks=False)
        os.chmod(path, 0o600, follow_symlinks=False)
    return made
