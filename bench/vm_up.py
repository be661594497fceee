#!/usr/bin/env python3
"""Benchmark: `vtorque vm up` to ready, against libvirt driven directly; teardown time.

For the same test guest, measured in one run, alternating so drift hits both sides:
  - vtorque: wall time of the `vtorque vm up` command (process start, checks, overlay-free
    direct boot, seed, XML, libvirt, wait for the ready line) for one guest;
  - baseline: a minimal hand-written domain XML started with libvirt's createXML, waiting
    for the same ready line on the serial console log, polled the same way;
  - teardown: wall time of `vtorque vm down` for a job with 2 guests.
Budgets (issue 2): up/baseline ratio <= 1.10, teardown of 2 guests <= 1 s.

Needs root, the test image (scripts/setup) and libvirtd (scripts/netns-libvirtd start).
Usage: bench/vm_up.py [--rounds N] [--pool DIR]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import libvirt
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vtorque.images import Catalog  # noqa: E402
from vtorque.vm.readiness import POLL_SECONDS, console_has  # noqa: E402

BASELINE_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>{cmdline} vtorque.ready={token}</cmdline></os>
  <features><acpi/></features>
  <devices>
    <serial type='pty'><log file='{log}' append='off'/><target port='0'/></serial>
  </devices>
</domain>"""


def wait_for(path: str, line: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not console_has(path, line):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: guest did not answer within {timeout} s ({path})")
        time.sleep(POLL_SECONDS)


def baseline_once(conn, image, workdir: str) -> float:
    token = secrets.token_hex(8)
    name = f"bench-baseline-{token[:6]}"
    log = os.path.join(workdir, f"{name}.log")
    xml = BASELINE_XML.format(name=name, kernel=image.kernel.path, initrd=image.initrd.path,
                              cmdline=image.cmdline, token=token, log=log)
    start = time.monotonic()
    dom = conn.createXML(xml, 0)
    try:
        wait_for(log, f"vtorque-ready {token}")
        return time.monotonic() - start
    finally:
        dom.destroy()
        os.unlink(log)


def vtorque(config: str, *args: str) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "vtorque", "--config", config, *args],
                   check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, choices=range(1, 11))
    parser.add_argument("--pool", default=os.environ.get("VTORQUE_TEST_POOL",
                                                         "/var/lib/vtorque/test-images"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="vtorque-bench-", dir="/var/tmp")
    os.chmod(work, 0o755)
    # The same guest on both sides: the test image without its host-root share (a job
    # feature the minimal baseline XML has no counterpart for), in a private pool.
    pool = os.path.join(work, "pool")
    os.mkdir(pool, 0o755)
    source = Catalog(args.pool).authorize("testguest")
    for item in (source.kernel, source.initrd):
        shutil.copy2(item.path, os.path.join(pool, os.path.basename(item.path)))
    with open(source.descriptor) as handle:
        descriptor = handle.read().replace("host_share: true\n", "")
    with open(os.path.join(pool, "testguest.yaml"), "w") as handle:
        handle.write(descriptor)
    args.pool = pool
    config = os.path.join(work, "vtorque.yaml")
    with open(config, "w") as handle:
        yaml.safe_dump({"image_pool": args.pool, "state_dir": f"{work}/state",
                        "hypervisor": "qemu", "min_free_space": "64M",
                        "host_reserve": {"cores": 0, "memory": "512M"},
                        "defaults": {"img": "testguest", "ram": "256M"},
                        # The boot against libvirt's: snapshot starts are bench/snapshot.py's.
                        "snapshots": {"enabled": False}}, handle)
    image = Catalog(args.pool).authorize("testguest")
    conn = libvirt.open("qemu:///system")
    ups, bases, downs = [], [], []
    try:
        for round_no in range(args.rounds):
            job = f"bench-{os.getpid()}-{round_no}"
            bases.append(baseline_once(conn, image, work))
            ups.append(vtorque(config, "vm", "up", "--job", job, "--request",
                               "vms_per_node=1"))
            vtorque(config, "vm", "down", "--job", job)
            vtorque(config, "vm", "up", "--job", job + "-2", "--request", "vms_per_node=2")
            downs.append(vtorque(config, "vm", "down", "--job", job + "-2"))
    finally:
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
    up, base, down = (statistics.median(x) for x in (ups, bases, downs))
    ratio = up / base
    print(f"rounds: {args.rounds} (medians; TCG, 1 vCPU, 256 MiB, direct kernel boot)")
    print(f"baseline, libvirt createXML to ready:  {base:6.2f} s  {fmt(bases)}")
    print(f"vtorque vm up to ready (1 guest):      {up:6.2f} s  {fmt(ups)}")
    print(f"ratio vtorque/baseline:                {ratio:6.3f}   budget <= 1.10 "
          f"{'ok' if ratio <= 1.10 else 'OVER'}")
    print(f"vtorque vm down, 2 guests:             {down:6.2f} s  {fmt(downs)} budget <= 1 s "
          f"{'ok' if down <= 1.0 else 'OVER'}")
    return 0


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


if __name__ == "__main__":
    sys.exit(main())
