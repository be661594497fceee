"""How scripts/torque-cluster builds Torque 6.1 from the vendored sources.

The cache key covers the tarballs, the patches under scripts/patches/torque/ and the text
of this module (the build recipe), not the rest of scripts/torque-cluster: changing how
the cluster is started does not rebuild Torque. A build is one directory:

    <cache>/torque-<key>/
        prefix/          bin sbin lib include (configure --prefix, the cache path itself)
        skel/            what `make install` put into the TORQUE home (pbs_environment,
                         server_name, the server and mom directories with Torque's modes)
        libexec/         pbs_mkdirs and torque.setup as the build generated them
        build.json       what was built, with what, and how long each step took
        logs/            the output of every step

Torque compiles its home directory (clients read server_name and torque.cfg there, and
trqauthd keeps its socket there) into every program: HOME below is that directory, and
`torque-cluster start` uses it unless told otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import buildcache  # noqa: E402

NAME = "torque"
TARBALL = "torque-6.1-dev.tar.gz"
HOME = "/var/lib/vtorque-torque"            # compiled in: PBS_SERVER_HOME
PYTHON = "/usr/bin/python3"
PATCH_DIR = buildcache.REPO / "scripts" / "patches" / "torque"
JOBS = "2"
# Debian 12's autoconf is 2.71: its configure stops with "TORQUE needs pthreads".
AUTOTOOLS_ENV = {"AUTOCONF": "autoconf2.69", "AUTOHEADER": "autoheader2.69",
                 "AUTOM4TE": "autom4te2.69", "AUTORECONF": "autoreconf2.69"}
CONFIGURE = [
    "--with-server-home=" + HOME,
    "--with-trqauthd-sock-dir=" + HOME,
    "--with-default-server=localhost",
    "--without-tcl", "--disable-gui", "--with-pam=no", "--with-rcp=/usr/bin/scp",
    "--disable-gcc-warnings",
]
# Torque's default ports (15001-15004) are OpenPBS's too, and both may run on one machine:
# these are Torque's own compile-time switches (#ifndef in pbs_ifl.h), so every program,
# libtorque and the daemons agree without options or /etc/services entries.
PORTS = {"PBS_BATCH_SERVICE_PORT": 15101, "PBS_MOM_SERVICE_PORT": 15102,
         "PBS_MANAGER_SERVICE_PORT": 15103, "PBS_SCHEDULER_SERVICE_PORT": 15104,
         "TRQ_AUTHD_SERVICE_PORT": 15105}
CPPFLAGS = " ".join(f"-D{k}={v}" for k, v in PORTS.items())
# The default build has -Werror; NULL_FUNC ('\0' used as a function pointer) needs
# -fpermissive, and GCC 10+ needs -fcommon for the tentative definitions.
CFLAGS = "-g -fcommon -fpermissive"
BUILD_PACKAGES = ["build-essential", "autoconf2.69", "autoconf", "automake", "libtool",
                  "pkg-config", "libxml2-dev", "zlib1g-dev", "libssl-dev", "libboost-dev"]


def say(msg: str) -> None:
    print(f"torque-cluster: {msg}", file=sys.stderr, flush=True)


def patches(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.patch")) if directory.is_dir() else []


def inputs() -> list[Path | str]:
    return [buildcache.vendor_file(TARBALL), *patches(PATCH_DIR), Path(__file__).read_text()]


def key() -> str:
    return buildcache.cache_key(inputs())


def cached() -> Path | None:
    """The finished build for the current inputs, if this machine has it."""
    final = buildcache.CACHE_ROOT / f"{NAME}-{key()}"
    return final if final.is_dir() else None


def build() -> Path:
    """The cached build, made first when missing."""
    k = key()
    final = buildcache.CACHE_ROOT / f"{NAME}-{k}"
    if final.is_dir():
        return final
    say(f"building Torque into {final} (cache key {k}; about 15 min on 2 cores)")
    return buildcache.cached_build(NAME, k, lambda partial: _build(partial, final))


def unpack(tarball: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(into)], check=True)
    [top] = list(into.iterdir())
    return top


class Steps:
    def __init__(self, out: Path):
        self.logs = out / "logs"
        self.logs.mkdir()
        self.times: dict[str, float] = {}

    def run(self, label: str, argv: list[str], cwd: Path, env: dict | None = None,
            timeout: float = 3600) -> None:
        log = self.logs / f"{label}.log"
        t0 = time.monotonic()
        say(f"  {label}: {' '.join(argv)[:110]}")
        with open(log, "ab") as out:
            proc = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout,
                                  env={**os.environ, "LC_ALL": "C", **(env or {})})
        self.times[label] = self.times.get(label, 0.0) + time.monotonic() - t0
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            raise SystemExit(f"torque-cluster: {label} failed (status {proc.returncode}); "
                             f"last lines of {log}:\n  " + "\n  ".join(tail))


def _build(out: Path, final: Path) -> None:
    missing = [t for t in ("autoconf2.69", "libtoolize", "automake", "g++", "make")
               if not shutil.which(t)]
    if missing:
        raise SystemExit(f"torque-cluster: missing {', '.join(missing)}: apt-get install "
                         + " ".join(BUILD_PACKAGES))
    steps = Steps(out)
    t_all = time.monotonic()
    prefix = final / "prefix"                  # where the programs will run from
    src = unpack(buildcache.vendor_file(TARBALL), out / "src")
    for patch in patches(PATCH_DIR):
        steps.run("patch", ["patch", "-p1", "--forward", "-i", str(patch)], src)
    # autogen.sh, with autoconf 2.69.
    (src / "m4").mkdir(exist_ok=True)
    for argv in (["libtoolize", "-c", "-f"], ["aclocal"], ["autoconf2.69", "-f"],
                 ["autoheader2.69", "-f"], ["automake", "-a", "-c", "-f"]):
        steps.run("autogen", argv, src, AUTOTOOLS_ENV)
    steps.run("configure", ["./configure", f"--prefix={prefix}", *CONFIGURE], src,
              {"CFLAGS": CFLAGS, "CXXFLAGS": CFLAGS, "CPPFLAGS": CPPFLAGS})
    steps.run("make", ["make", f"-j{JOBS}"], src)
    # DESTDIR: the tree lands in out/ and is renamed into place with it; FROM_TORQUE_BUILD
    # keeps make install away from /etc (init scripts, systemd units, ld.so.conf).
    dest = out / "destdir"
    steps.run("install", ["make", "install", "FROM_TORQUE_BUILD=1", f"DESTDIR={dest}"], src)
    shutil.move(str(dest / prefix.relative_to("/")), str(out / "prefix"))
    shutil.move(str(dest / HOME.lstrip("/")), str(out / "skel"))
    left = [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()]
    if left:
        raise SystemExit(f"torque-cluster: make install wrote outside the prefix and home: "
                         f"{left[:10]}")
    shutil.rmtree(dest)
    libexec = out / "libexec"
    libexec.mkdir()
    for name in ("buildutils/pbs_mkdirs", "torque.setup"):
        shutil.copy2(src / name, libexec / os.path.basename(name))
    info = {"torque": TARBALL, "patches": [p.name for p in patches(PATCH_DIR)],
            "home": HOME, "configure": [f"--prefix={prefix}", *CONFIGURE], "cflags": CFLAGS,
            "cppflags": CPPFLAGS, "ports": PORTS}
    shutil.rmtree(out / "src")
    steps.times["total"] = time.monotonic() - t_all
    info["seconds"] = {k: round(v, 1) for k, v in steps.times.items()}
    (out / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    say("built in " + ", ".join(f"{k} {v:.0f} s" for k, v in steps.times.items()))
