"""`vtorque doctor [--json] [--hooks PATH]`: is this node ready for VM jobs?

One line per check, `ok`, `warn` or `fail`, what was found and, unless ok, the fix. Every
check asks the thing itself (opens /dev/kvm, boots a probe, connects to libvirtd, reads
the pool, hashes nothing the root side would not), each bounded in time. Exit status 1
when any check fails (warnings do not fail), 0 otherwise.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

from vtorque import proc
from vtorque.errors import VtorqueError

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def check_kvm(config) -> Check:
    from vtorque.admin import kvmprobe
    mode = config.hypervisor
    api = kvmprobe.kvm_api()
    if not api.ok:
        if mode == "kvm":
            return Check("kvm", FAIL, api.detail, "load kvm_intel or kvm_amd, or set "
                         "hypervisor: qemu (TCG)")
        return Check("kvm", WARN if os.path.exists(kvmprobe.KVM) else OK,
                     f"{api.detail}; guests run under TCG (hypervisor: {mode})")
    answer = kvmprobe.boot("kvm")
    if answer.ok:
        return Check("kvm", OK, f"{api.detail}; {answer.detail}")
    why = (f"{api.detail}, but {answer.detail}: KVM is not usable here (nested "
           "virtualization without hardware support passed through)")
    if mode == "qemu":
        return Check("kvm", WARN, f"{why}; guests run under TCG (hypervisor: qemu)")
    picks = " and hypervisor: auto picks KVM because /dev/kvm opens" if mode == "auto" \
        else ""
    return Check("kvm", FAIL, why + picks, f"set hypervisor: qemu in {config.path} (TCG, "
                 "slow) or give this host working KVM")


def check_qemu(config) -> Check:
    from vtorque.admin import kvmprobe
    qemu = kvmprobe.qemu_binary()
    if qemu is None:
        return Check("qemu", FAIL, "qemu-system-x86_64 not found",
                     "apt-get install qemu-system-x86")
    try:
        version = proc.run([qemu, "--version"], timeout=30).stdout.splitlines()[0]
        machines = machine_types(proc.run([qemu, "-machine", "help"], timeout=30).stdout)
    except (VtorqueError, IndexError) as exc:
        return Check("qemu", FAIL, f"{qemu} does not answer: {exc}", "reinstall QEMU")
    if config.machine_type not in machines:
        return Check("qemu", FAIL, f"{qemu} ({version}) has no machine type "
                     f"{config.machine_type}", "set machine_type to one of q35, pc")
    tcg = kvmprobe.boot("tcg", qemu)
    if not tcg.ok:
        return Check("qemu", FAIL, f"{qemu} ({version}): {tcg.detail}",
                     "check QEMU's installation (the probe needs no image)")
    return Check("qemu", OK, f"{qemu}: {version}; machine types {config.machine_type} "
                 f"(configured) and {len(machines)} others; {tcg.detail}")


def machine_types(text: str) -> set[str]:
    """Machine names and aliases from `qemu-system-x86_64 -machine help` (pure)."""
    names = set()
    for line in text.splitlines()[1:]:
        words = line.split()
        if words:
            names.add(words[0])
            alias = re.search(r"\(alias of ([^)]+)\)", line)
            if alias:
                names.add(alias.group(1))
    return names


def virsh(config, *args: str) -> str:
    return proc.run(["/usr/bin/virsh", "-c", config.libvirt_uri, *args], timeout=30).stdout


def libvirt_versions(text: str) -> str:
    """`virsh version --daemon` in short: libvirtd's and the hypervisor's versions."""
    daemon = re.search(r"Running against daemon: (\S+)", text)
    hypervisor = re.search(r"Running hypervisor: (.+)", text)
    return (f"libvirtd {daemon.group(1) if daemon else '?'}, hypervisor "
            f"{hypervisor.group(1).strip() if hypervisor else '?'}")


def check_libvirt(config) -> Check:
    from vtorque.vm.host import Host
    try:
        with Host(config.libvirt_uri, retries=1) as host:
            types = sorted(host.domain_types())
    except VtorqueError as exc:
        return Check("libvirt", FAIL, str(exc), "start libvirtd (systemctl start "
                     "libvirtd) or fix libvirt_uri")
    try:
        version = libvirt_versions(virsh(config, "version", "--daemon"))
    except VtorqueError as exc:
        version = f"version unknown ({exc})"
    want = "kvm" if config.hypervisor == "kvm" else "qemu"
    if want not in types:
        return Check("libvirt", FAIL, f"{config.libvirt_uri}: {version}; domain types "
                     f"{', '.join(types)} lack {want}", "install the QEMU driver of libvirt")
    return Check("libvirt", OK, f"{config.libvirt_uri} reachable; {version}; domain types "
                 f"{', '.join(types)}")


def check_network(config) -> Check:
    net = config.network
    if net.mode == "none":
        return Check("network", OK, "network.mode none: guests get no NIC (no ssh, no MPI "
                     "across guests)")
    if net.mode == "bridge":
        if os.path.isdir(f"/sys/class/net/{net.bridge}/bridge"):
            return Check("network", OK, f"bridge {net.bridge} exists")
        return Check("network", FAIL, f"no bridge {net.bridge} in this network namespace",
                     "create it (and its uplink) or set network.bridge")
    try:
        info = dict(line.split(":", 1) for line in virsh(config, "net-info", net.name)
                    .splitlines() if ":" in line)
    except VtorqueError as exc:
        return Check("network", FAIL, f"libvirt network {net.name}: {exc}",
                     f"define and start it: virsh net-define, virsh net-start {net.name}")
    info = {k.strip().lower(): v.strip() for k, v in info.items()}
    if info.get("active") != "yes":
        return Check("network", FAIL, f"libvirt network {net.name} is not active",
                     f"virsh net-start {net.name}")
    return Check("network", OK, f"libvirt network {net.name} active (bridge "
                 f"{info.get('bridge', '?')}), guests in {net.subnet}")


def check_images(config) -> list[Check]:
    from vtorque.images import Catalog
    catalog = Catalog(config.image_pool,
                      checksum_cache=os.path.join(config.state_dir, ".checksums"))
    try:
        names = catalog.names()
    except VtorqueError as exc:
        return [Check("images", FAIL, str(exc), "create the pool (root-owned, 0755)")]
    if not names:
        return [Check("images", WARN, f"no image in {config.image_pool}",
                      "vtorque image add NAME FILE ...")]
    out = [Check("images", OK, f"{len(names)} image(s) in {config.image_pool}")]
    for name in names:
        try:
            image = catalog.authorize(name)
            files = ", ".join(f"{role} sha256 {f.sha256[:12]}" for role, f in image.files())
            out.append(Check(f"image {name}", OK, f"{image.kind}, {image.distro}: "
                             f"checksums match ({files})"))
        except VtorqueError as exc:
            out.append(Check(f"image {name}", FAIL, str(exc),
                             "vtorque image verify; re-add it with vtorque image add"))
    return out


def check_secret(config) -> Check:
    from vtorque.mpi.sshkeys import read_secret
    try:
        size = len(read_secret(config.secret_file))
    except VtorqueError as exc:
        return Check("secret", FAIL, str(exc), f"head -c 32 /dev/urandom > "
                     f"{config.secret_file}; chmod 600 {config.secret_file} (the same file "
                     "on every node)")
    return Check("secret", OK, f"{config.secret_file}: {size} bytes, root's, mode 0600")


def check_accounts(config) -> Check:
    from vtorque.vm.lifecycle import qemu_ids
    try:
        uid, gid = qemu_ids(config)
    except VtorqueError as exc:
        return Check("qemu user", FAIL, str(exc), "install libvirt-daemon-system")
    return Check("qemu user", OK, f"{config.qemu_user} (uid {uid}), group "
                 f"{config.qemu_group} (gid {gid})")


BATCH_COMMANDS = {"slurm": ("sbatch", "scontrol", "scancel"),
                  "torque": ("qsub", "qstat", "pbsnodes"),
                  "openpbs": ("qsub", "qstat", "pbsnodes")}


def batch_system(config) -> tuple[str | None, Check]:
    from vtorque.batch import registry
    from vtorque.batch.base import is_executable
    try:
        system = registry.resolve(config.batch.system, config.batch.bin_dir)
    except VtorqueError as exc:
        return None, Check("batch", FAIL, str(exc), "set batch.bin_dir and batch.system")
    missing = [c for c in BATCH_COMMANDS[system]
               if not is_executable(os.path.join(config.batch.bin_dir, c))]
    if missing:
        return system, Check("batch", FAIL, f"{system}: {', '.join(missing)} missing in "
                             f"{config.batch.bin_dir}", "install the scheduler's client "
                             "commands or fix batch.bin_dir")
    return system, Check("batch", OK, f"{system}: {', '.join(BATCH_COMMANDS[system])} in "
                         f"{config.batch.bin_dir}")


def check_space(config) -> list[Check]:
    from vtorque.node import free_space_mib
    from vtorque.units import format_mib
    out = []
    for key, path in (("state_dir", config.state_dir), ("ramdisk_dir", config.ramdisk_dir)):
        free = free_space_mib(path)
        status = OK if free >= config.min_free_space else FAIL
        out.append(Check(f"space {key}", status, f"{path}: {format_mib(free)} free "
                         f"(min_free_space {format_mib(config.min_free_space)})",
                         "" if status == OK else f"free space under {path}"))
    shared = config.batch.shared_state_dir
    if not os.path.isdir(shared):
        out.append(Check("shared state", WARN, f"{shared} does not exist yet (made by the "
                         "first prologue)", "make it on the file system all nodes share"))
    elif not os.access(shared, os.W_OK):
        out.append(Check("shared state", FAIL, f"{shared} is not writable here",
                         "mount it read-write for root on every node"))
    else:
        out.append(Check("shared state", OK, f"{shared} writable"))
    return out


def check_templates(config) -> Check:
    """The node's snapshot templates: how many, their size, and the ones that failed."""
    from vtorque.files import path_problem
    from vtorque.units import format_mib
    from vtorque.vm.template_store import TemplateStore
    store = TemplateStore(config.state_dir)
    if not config.snapshots.enabled:
        return Check("snapshot templates", OK, "snapshots.enabled is false: every guest "
                     "boots")
    problem = path_problem(store.root, missing_ok=True)
    if problem:
        return Check("snapshot templates", FAIL, problem, f"remove {store.root}; vtorque "
                     "makes it again (root's, 0711)")
    entries = store.entries()
    ready = [meta for _key, meta in entries if meta]
    failed = len(entries) - len(ready)
    detail = (f"{len(ready)} in {store.root} ({format_mib(store.bytes_used() >> 20)}), "
              f"keep {config.snapshots.keep}")
    if failed:
        return Check("snapshot templates", WARN, detail + f"; {failed} failed or being "
                     "built (the node's log says why)", "guests of those shapes boot; "
                     "the template is tried again after snapshots.retry_after")
    return Check("snapshot templates", OK, detail)


def check_hugepages(config) -> Check:
    """Each huge page pool (size, total, free, reserved, per NUMA node) and the pages held
    for guests being started; a fail when the site's default page size has no pages."""
    from vtorque.units import format_hugepages
    from vtorque.vm import hugepage_reservations, hugepages
    try:
        pools = hugepages.read_pools(config.numa.sysfs_root)
        held = hugepage_reservations.pending(config)
    except VtorqueError as exc:
        return Check("huge pages", WARN, str(exc))
    parts = []
    for pool in pools:
        text = (f"{hugepages.page_text(pool.page_kib)} pages: {pool.total} in all, "
                f"{pool.free} free, {pool.reserved} reserved")
        if held.get(pool.page_kib):
            text += f", {held[pool.page_kib]} held for guests being started"
        if pool.nodes:
            text += " (" + ", ".join(f"NUMA node {n.node}: {n.free} of {n.total} free"
                                     for n in pool.nodes) + ")"
        parts.append(text)
    try:
        with open(os.path.join(config.numa.sysfs_root,
                               "sys/kernel/mm/transparent_hugepage/enabled")) as handle:
            thp = re.search(r"\[(\w+)\]", handle.read())
        thp_mode = thp.group(1) if thp else "unknown"
    except OSError:
        thp_mode = "unavailable"
    detail = "; ".join(parts or ["no huge page pools"]) + \
        f"; transparent huge pages: {thp_mode}"
    default = config.defaults.hugepages
    if default:
        pool = hugepages.pool_of(pools, default * 1024)
        if pool is None or not pool.total:
            return Check("huge pages", FAIL, detail + f"; defaults.hugepages is "
                         f"{format_hugepages(default)}, so every VM job needs pages this "
                         "node does not have", "give the node a pool (sysctl vm.nr_hugepages "
                         "for 2M pages; hugepagesz=1G hugepages=N on the kernel command line "
                         "for 1G) or set defaults.hugepages: no")
    if not any(pool.total for pool in pools):
        return Check("huge pages", OK, detail + "; jobs asking -vm hugepages are refused here")
    unmounted = [hugepages.page_text(p.page_kib) for p in pools if p.total and
                 not hugepages.hugetlbfs_mounted(config.numa.sysfs_root, p.page_kib)]
    if unmounted:
        return Check("huge pages", WARN, detail + f"; no hugetlbfs mounted for "
                     f"{', '.join(unmounted)} pages: libvirt refuses guests on them",
                     "mount one per page size (mount -t hugetlbfs -o pagesize=2M none "
                     "/dev/hugepages), then restart libvirtd")
    return Check("huge pages", OK, detail)


def check_rdma(config) -> Check:
    from vtorque.ibverbs import pool, sysfs
    ib = config.ibverbs
    hcas = sysfs.discover(ib.sysfs_root)
    held = {a.pci for a in pool.assignments(config)}
    if not hcas:
        fallback = "Soft-RoCE (soft_roce: true)" if ib.soft_roce else "refused here"
        return Check("rdma", OK, f"no InfiniBand or RoCE adapter; vrdma jobs: {fallback}")
    usable = sysfs.usable(hcas, ib.devices) if ib.sriov else []
    parts, free_total = [], 0
    for hca in hcas:
        free = sum(1 for vf in hca.vfs if vf.pci not in held and vf.driver != "vfio-pci")
        free_total += free if hca in usable else 0
        parts.append(f"{hca.name} ({hca.hca_type}): {hca.sriov_enabled} of "
                     f"{hca.sriov_total} functions enabled, {free} free")
    detail = "; ".join(parts)
    if ib.sriov and not free_total and not ib.soft_roce:
        return Check("rdma", WARN, detail + "; no free virtual function for guests",
                     "enable SR-IOV functions (sriov_numvfs) or wait for jobs to end")
    return Check("rdma", OK, detail + f"; {len(held)} function(s) held by jobs")


def run_checks(config, hooks: str | None = None) -> list[Check]:
    from vtorque.admin import doctor_hooks
    checks: list[Check] = []
    simple: list[Callable] = [check_kvm, check_qemu, check_libvirt, check_network]
    checks += [f(config) for f in simple]
    checks += check_images(config)
    checks += [check_secret(config), check_accounts(config)]
    system, batch = batch_system(config)
    checks.append(batch)
    if system is not None:
        checks.append(Check("hooks", *doctor_hooks.check_hooks(config, system, hooks)))
        checks.append(Check("job shell", *doctor_hooks.check_job_shell(config)))
    checks += check_space(config)
    checks += [check_hugepages(config), check_rdma(config), check_templates(config)]
    return checks


def cmd_doctor(args) -> int:
    from vtorque import config as config_mod
    from vtorque.errors import ConfigError
    path = config_mod.resolve_path(args.config)
    try:
        config = config_mod.load(path)
    except ConfigError as exc:
        checks = [Check("config", FAIL, "; ".join(exc.problems), f"vtorque config check "
                        f"--config {path}")]
    else:
        checks = [Check("config", OK, f"{path} valid")] + run_checks(config, args.hooks)
    if args.json:
        print(json.dumps([asdict(c) for c in checks]))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            fix = f" -- fix: {c.fix}" if c.fix and c.status != OK else ""
            print(f"{c.status:<4} {c.name:<{width}}  {c.detail}{fix}")
    return 1 if any(c.status == FAIL for c in checks) else 0


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="is this node ready for VM jobs? (one line per check; "
                       "exit 1 when one fails)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--hooks", metavar="PATH", help="where the hook shims were installed "
                   "(Torque: mom_priv; Slurm: the shims' directory; OpenPBS: the rendered "
                   "hook file); default: each installer's default")
    p.set_defaults(func=cmd_doctor)
