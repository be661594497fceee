"""Guest disks: qcow2 overlays on authorized base images and empty scratch disks."""

from __future__ import annotations

import os

from vtorque import proc
from vtorque.vm.spec import GuestSpec

QEMU_IMG = "/usr/bin/qemu-img"


def overlay_argv(base: str, base_format: str, overlay: str) -> list[str]:
    """qemu-img argv for a copy-on-write overlay; the base format is always stated, so
    qemu never probes it (a raw image with a qcow2 header stays raw)."""
    return [QEMU_IMG, "create", "-q", "-f", "qcow2", "-F", base_format, "-b", base, overlay]


def scratch_argv(path: str, size_mib: int) -> list[str]:
    return [QEMU_IMG, "create", "-q", "-f", "qcow2", path, f"{size_mib}M"]


def create_disks(spec: GuestSpec, timeout: float) -> list[str]:
    """Create the guest's overlay and scratch disk, owned by the QEMU user, mode 0600.
    Returns the paths made (for the journal)."""
    made = []
    if spec.overlay is not None:
        proc.run(overlay_argv(spec.base_image, spec.base_format, spec.overlay.path),
                 timeout=timeout)
        made.append(spec.overlay.path)
    if spec.scratch is not None:
        proc.run(scratch_argv(spec.scratch.path, spec.scratch_mib), timeout=timeout)
        made.append(spec.scratch.path)
    for path in made:
        os.chown(path, spec.qemu_uid, spec.qemu_gid, follow_symlinks=False)
        os.chmod(path, 0o600, follow_symlinks=False)
    return made
