"""Is KVM usable here? Asked without waiting for a job: /dev/kvm's API answered through
ioctls that run no guest code (API version, a VM and a virtual CPU created), then a
bounded QEMU boot of nothing: a 64 KiB BIOS image (kvmprobe.S beside this file) that
takes the virtual CPU from real mode through protected mode and paging into long mode,
one letter per step on QEMU's debug console, and exits QEMU with status 99. A nested KVM
that cannot run guests (the host's hypervisor does not pass virtualization through)
opens, answers the API and then hangs the virtual CPU: the letters tell where, the
timeout bounds the wait. The same image under TCG checks that QEMU itself works.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from vtorque import proc
from vtorque.errors import CommandError

KVM = "/dev/kvm"
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_API_VERSION = 12
EXIT_OK = 99                       # isa-debug-exit: (0x31 << 1) | 1
PROBE_TIMEOUT = 10.0
STAGES = {"R": "real mode", "P": "protected mode", "E": "long mode enabled",
          "G": "paging", "L": "long mode"}
# kvmprobe.S assembled: the code at offset 0 (address 0xf0000) and the reset vector at
# offset 0xfff0 (ljmp 0xf000:0).
_CODE = bytes.fromhex(
    "fab800f08ed8b052e6e9660f0116c0000f20c06683c8010f22c066ea22000f00080066b810008ed8"
    "8ec08ed0b050e6e9bf0010000031c0b9000c0000f3abc7050010000003200000c705002000000330"
    "0000c70500300000830000000f20e083c8200f22e0b8001000000f22d8b9800000c00f320d000100"
    "000f30b045e6e90f20c00d000000800f22c0b047e6e9ea95000f001800b04ce6e9b031e6f4f4ebfd"
    "0000000000000000ffff0000009acf00ffff00000092cf00ffff0000009aaf001f00a0000f00")
_RESET = bytes.fromhex("ea000000f0")


def rom() -> bytes:
    """The 64 KiB BIOS image."""
    image = bytearray(0x10000)
    image[:len(_CODE)] = _CODE
    image[0xFFF0:0xFFF0 + len(_RESET)] = _RESET
    return bytes(image)


@dataclass(frozen=True)
class ApiAnswer:
    ok: bool
    detail: str
    version: int | None = None


def kvm_api(path: str = KVM) -> ApiAnswer:
    """Open /dev/kvm and ask its API version, create a VM and a virtual CPU (no KVM_RUN:
    nothing here can hang)."""
    if not os.path.exists(path):
        return ApiAnswer(False, f"{path} does not exist (no KVM on this host)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return ApiAnswer(False, f"cannot open {path}: {exc.strerror}")
    vm = vcpu = -1
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            return ApiAnswer(False, f"{path} speaks KVM API {version}, not "
                                    f"{KVM_API_VERSION}", version)
        vm = fcntl.ioctl(fd, KVM_CREATE_VM, 0)
        vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
        return ApiAnswer(True, f"{path}: API {version}, a VM and a virtual CPU created",
                         version)
    except OSError as exc:
        return ApiAnswer(False, f"{path} refused an ioctl: {exc.strerror}")
    finally:
        for handle in (vcpu, vm, fd):
            if handle >= 0:
                os.close(handle)


@dataclass(frozen=True)
class BootAnswer:
    ok: bool
    accel: str
    stages: str                    # the letters the probe printed, e.g. "RPEGL"
    seconds: float
    detail: str
    timed_out: bool = False


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64", path=proc.SAFE_PATH)


def boot(accel: str, qemu: str | None = None, timeout: float = PROBE_TIMEOUT) -> BootAnswer:
    """Boot the probe image under `accel` (kvm or tcg), bounded by `timeout`."""
    qemu = qemu or qemu_binary()
    if qemu is None:
        return BootAnswer(False, accel, "", 0.0, "qemu-system-x86_64 not found")
    with tempfile.TemporaryDirectory(prefix="vtorque-kvmprobe-") as tmp:
        image, console = os.path.join(tmp, "probe.rom"), os.path.join(tmp, "console")
        with open(image, "wb") as handle:
            handle.write(rom())
        argv = [qemu, "-accel", accel, "-machine", "pc", "-nodefaults", "-display", "none",
                "-serial", "none", "-monitor", "none", "-m", "16", "-bios", image,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-debugcon", f"file:{console}"]
        started = time.monotonic()
        timed_out, status, err = False, None, ""
        try:
            done = proc.run(argv, timeout=timeout, check=False)
            status, err = done.returncode, done.stderr
        except CommandError as exc:
            timed_out, err = exc.timed_out, exc.stderr
            if not exc.timed_out:
                return BootAnswer(False, accel, "", 0.0, str(exc))
        seconds = time.monotonic() - started
        try:
            with open(console, "rb") as handle:
                stages = "".join(c for c in handle.read(64).decode(errors="replace")
                                 if c in STAGES)
        except OSError:
            stages = ""
    return _verdict(accel, stages, seconds, status, timed_out, err, timeout)


def _verdict(accel: str, stages: str, seconds: float, status: int | None, timed_out: bool,
             err: str, timeout: float) -> BootAnswer:
    reached = STAGES[stages[-1]] if stages else "nothing"
    if status == EXIT_OK and stages == "RPEGL":
        return BootAnswer(True, accel, stages, seconds,
                          f"a {accel} guest ran real, protected and long mode in "
                          f"{seconds:.2f} s")
    if timed_out:
        nxt = [name for letter, name in STAGES.items() if letter not in stages]
        hang = f"entering {nxt[0]}" if nxt else "before exiting"
        return BootAnswer(False, accel, stages, seconds,
                          f"a {accel} guest hangs {hang} (reached {reached}; stopped after "
                          f"{timeout:g} s)", True)
    last = err.strip().splitlines()[-1] if err.strip() else f"exit status {status}"
    return BootAnswer(False, accel, stages, seconds,
                      f"QEMU -accel {accel} failed (reached {reached}): {last}")
