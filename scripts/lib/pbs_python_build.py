"""How scripts/torque-cluster builds pbs_python (the `pbs` SWIG binding of libtorque and
`PBSQuery`) for /usr/bin/python3 against the cached Torque build (torque_build.py).

The tarball ships only a wrapper that SWIG 2.0.7 generated for Python 2, not its interface
file: scripts/patches/torque/pbs_python/pbs.i is one written for SWIG 4 and Python 3 with
the same Python API, and the *.patch files there port PBSQuery.py to Python 3. The cache key
covers the tarball, those files, this module's text and the Torque build it links against:

    <cache>/pbs_python-<key>/
        site-packages/   pbs.py, _pbs.cpython-*.so (RUNPATH: the Torque build), PBSQuery.py
        build.json, logs/
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import buildcache  # noqa: E402
import torque_build  # noqa: E402

NAME = "pbs_python"
TARBALL = "pbs_python-3379ff9.tar.gz"
FILES_DIR = buildcache.REPO / "scripts" / "patches" / "torque" / "pbs_python"
PYTHON = torque_build.PYTHON
BUILD_PACKAGES = ["swig", "python3-dev", "g++"]


def inputs(torque: Path) -> list[Path | str]:
    files = sorted(p for p in FILES_DIR.iterdir() if p.is_file())
    return [buildcache.vendor_file(TARBALL), *files, Path(__file__).read_text(),
            f"torque build {torque.name}"]


def key(torque: Path) -> str:
    return buildcache.cache_key(inputs(torque))


def cached(torque: Path) -> Path | None:
    final = buildcache.CACHE_ROOT / f"{NAME}-{key(torque)}"
    return final if final.is_dir() else None


def build(torque: Path) -> Path:
    """site-packages of the cached pbs_python for this Torque build, built when missing."""
    k = key(torque)
    final = buildcache.CACHE_ROOT / f"{NAME}-{k}"
    if not final.is_dir():
        missing = [t for t in ("swig", "g++") if not shutil.which(t)]
        if missing:
            raise SystemExit(f"torque-cluster: missing {', '.join(missing)}: apt-get install "
                             + " ".join(BUILD_PACKAGES))
        torque_build.say(f"building pbs_python into {final} (cache key {k})")
        buildcache.cached_build(NAME, k, lambda partial: _build(partial, torque))
    return final / "site-packages"


def _python(code: str) -> str:
    return subprocess.run([PYTHON, "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


def _build(out: Path, torque: Path) -> None:
    steps = torque_build.Steps(out)
    t0 = time.monotonic()
    src = torque_build.unpack(buildcache.vendor_file(TARBALL), out / "src")
    for patch in sorted(FILES_DIR.glob("*.patch")):
        steps.run("patch", ["patch", "-p1", "--forward", "-i", str(patch)], src)
    # SWIG reads pbs_python's own header copies; the compiler must see Torque's installed
    # ones instead, so the wrapper is generated away from the copies.
    swig_inc = src / "src" / "C++"
    gen = out / "gen"
    site = out / "site-packages"
    gen.mkdir()
    site.mkdir()
    shutil.copy2(FILES_DIR / "pbs.i", gen / "pbs.i")
    steps.run("swig", ["swig", "-python", "-c++", f"-I{swig_inc}", "-o",
                       str(gen / "pbs_wrap.cxx"), "-outdir", str(site), str(gen / "pbs.i")], gen)
    include = _python("import sysconfig; print(sysconfig.get_paths()['include'])")
    suffix = _python("import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
    prefix = torque / "prefix"
    steps.run("compile", ["g++", "-shared", "-fPIC", "-O2", f"-I{include}",
                          f"-I{prefix}/include", str(gen / "pbs_wrap.cxx"), f"-L{prefix}/lib",
                          "-ltorque", f"-Wl,-rpath,{prefix}/lib", "-o",
                          str(site / f"_pbs{suffix}")], gen)
    shutil.copy2(src / "src" / "PBSQuery.py", site / "PBSQuery.py")
    steps.run("check", [PYTHON, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "import pbs, PBSQuery; print(pbs.version)", str(site)], out)
    shutil.rmtree(src.parent)
    steps.times["total"] = time.monotonic() - t0
    info = {"pbs_python": TARBALL, "python": PYTHON, "torque": str(torque),
            "files": [p.name for p in sorted(FILES_DIR.iterdir())],
            "seconds": {k: round(v, 1) for k, v in steps.times.items()}}
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    torque_build.say("built pbs_python in " + ", ".join(f"{k} {v:.0f} s"
                                                        for k, v in steps.times.items()))
