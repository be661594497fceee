"""Builds of vendored sources cached by what they are built from (scripts/ only).

A build is keyed by the sha256 of its inputs (the vendor tarballs, the patches and the
build script's own text): a machine that has the key reuses the build, any change to an
input builds afresh. A build is made in `<key dir>.partial` and renamed into place only
when it succeeded, so a killed or failed build never counts as cached.

    from buildcache import vendor_file, cache_key, cached_build

CI cannot download anything: every source comes from the vendor directory, found at
$VTORQUE_VENDOR, else ../shared/vendor next to the repository, else /work/shared/vendor.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("VTORQUE_BUILD_CACHE", "/var/cache/vtorque-build"))


def vendor_dir() -> Path:
    """Where the vendored source tarballs are (see the module docstring)."""
    candidates = [os.environ.get("VTORQUE_VENDOR", ""), str(REPO.parent / "shared" / "vendor"),
                  "/work/shared/vendor"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "SHA256SUMS").is_file():
            return Path(candidate)
    sys.exit("buildcache: no vendor directory with SHA256SUMS found (set VTORQUE_VENDOR)")


def vendor_file(name: str) -> Path:
    """A vendored tarball, checked against the vendor directory's SHA256SUMS."""
    directory = vendor_dir()
    sums = {}
    for line in (directory / "SHA256SUMS").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0]
    path = directory / name
    if name not in sums:
        sys.exit(f"buildcache: {name} is not listed in {directory}/SHA256SUMS")
    if sha256_file(path) != sums[name]:
        sys.exit(f"buildcache: {path} does not match its SHA256SUMS entry")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(inputs: Iterable[Path | str]) -> str:
    """16 hex digits over the contents of every input (files, or literal strings)."""
    digest = hashlib.sha256()
    for item in inputs:
        if isinstance(item, Path):
            digest.update(item.name.encode() + b"\0" + sha256_file(item).encode() + b"\0")
        else:
            digest.update(b"text\0" + item.encode() + b"\0")
    return digest.hexdigest()[:16]


def cached_build(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The cache directory `<name>-<key>`, made by `build(partial_dir)` when missing.

    Older builds of the same name are removed once the new one is in place."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE_ROOT, 0o755)
    final = CACHE_ROOT / f"{name}-{key}"
    if final.is_dir():
        return final
    partial = CACHE_ROOT / f"{name}-{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o755)
    build(partial)
    partial.rename(final)
    for old in CACHE_ROOT.glob(f"{name}-*"):
        if old != final and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final
