"""`vtorque image add|remove|verify|list|check`: the authorized image pool, managed safely
(vTorque's vmgr, without hand-written descriptors).

add copies the file into the pool (root's, 0644), refuses what the root side refuses
(a qcow2 with a backing file or an external data file, a raw file carrying another
format's header, a format that does not match `--format`) before and after the copy,
computes the sha256, writes the descriptor last and under a free name only, then runs
the root side's own gate (Catalog.authorize) on the result; anything refused is removed
again. remove refuses an image a running job uses unless --force, and then says what it
leaves behind. verify re-hashes every file of every image, trusting no cache.
"""

from __future__ import annotations

import json
import os
import shutil

from vtorque.errors import ImageError, VtorqueError
from vtorque.files import atomic_write, ensure_trusted_dir

SOURCE_FORMATS = ("raw", "vmdk")        # what --convert turns into qcow2


def _root(what: str) -> None:
    if os.geteuid() != 0:
        raise VtorqueError(f"image {what} must run as root (the pool is root's)")


def descriptor_text(name: str, kind: str, distro: str, arch: str, files: dict,
                    cmdline: str | None = None, host_share: bool = False) -> str:
    """The descriptor's YAML (pure): `files` maps disk/kernel/initrd to (file, sha256,
    format or None)."""
    import yaml
    data: dict = {"name": name, "kind": kind, "distro": distro, "arch": arch}
    for role in ("disk", "kernel", "initrd"):
        if role in files:
            rel, sha, fmt = files[role]
            entry = {"file": rel, "sha256": sha}
            if role == "disk":
                entry["format"] = fmt
            data[role] = entry
    if cmdline:
        data["cmdline"] = cmdline
    if host_share:
        data["host_share"] = True
    return "# written by vtorque image add\n" + yaml.safe_dump(data, sort_keys=False)


def _check_header(name: str, path: str, fmt: str, label: str) -> None:
    from vtorque.images import ImageFile
    from vtorque.images.formats import check_disk_header
    check_disk_header(name, label, ImageFile(path, "0" * 64, fmt))


def _source_checks(name: str, path: str, fmt: str, convert: bool) -> None:
    """Refuse before copying what the pool would refuse (or qemu-img must never read)."""
    from vtorque.images.pool_files import read_head
    if not convert:
        _check_header(name, path, fmt, path)
        return
    if fmt not in SOURCE_FORMATS:
        raise ImageError(f"image {name!r}: --convert takes a {' or '.join(SOURCE_FORMATS)} "
                         f"file (--format), not {fmt}")
    if fmt == "raw":
        _check_header(name, path, "raw", path)
        return
    head = read_head(path, 64)
    if not head.startswith(b"KDMV"):
        raise ImageError(f"image {name!r}: {path} is not a monolithic sparse VMDK (a VMDK "
                         "descriptor names other files; convert its extent instead)")


def cmd_image_add(args) -> int:
    from filelock import FileLock
    from vtorque import config as config_mod
    from vtorque.admin import imagecopy
    from vtorque.images import Catalog, check_name
    _root("add")
    config = config_mod.load(args.config)
    check_name(args.name)
    kind = args.kind
    if kind == "kernel" and (args.format or args.convert):
        raise VtorqueError("a kernel image has no disk: FILE is its kernel (--initrd, "
                           "--cmdline); --format and --convert do not apply")
    if kind != "kernel":
        if args.format is None:
            raise VtorqueError("--format qcow2|raw is required for a disk image")
        if args.initrd or args.cmdline:
            raise VtorqueError(f"--initrd and --cmdline are for kind kernel, not {kind}")
        if args.format == "vmdk" and not args.convert:
            raise VtorqueError("the pool holds qcow2 and raw disks: a vmdk needs --convert")
    pool = os.path.realpath(config.image_pool)
    ensure_trusted_dir(os.path.join(config.state_dir, ".locks"), 0o700)
    made: list[str] = []
    with FileLock(os.path.join(config.state_dir, ".locks", "image-pool.lock"), timeout=60):
        descriptor = os.path.join(pool, args.name + ".yaml")
        if os.path.lexists(descriptor):
            raise VtorqueError(f"image {args.name!r} exists already in {pool}; remove it "
                               "first (vtorque image remove)")
        try:
            files = _bring_in(args, config, pool, kind, made, imagecopy)
            atomic_write(descriptor, descriptor_text(
                args.name, kind, args.distro, args.arch, files, args.cmdline,
                args.host_share), 0o644, replace=False)
            made.append(descriptor)
            image = Catalog(pool, checksum_cache=os.path.join(config.state_dir, ".checksums")
                            ).authorize(args.name)
        except BaseException:
            for path in made:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            raise
    for role, f in image.files():
        size = os.stat(f.path).st_size
        fmt = f" {f.format}" if f.format else ""
        print(f"{role} {os.path.basename(f.path)}{fmt} {size} bytes sha256 {f.sha256}")
    print(f"image {image.name} added to {pool}: {image.kind}, {image.distro}, {image.arch}")
    return 0


def _bring_in(args, config, pool: str, kind: str, made: list[str], imagecopy) -> dict:
    """Copy the image's files into the pool; {role: (file, sha256, format)}."""
    files = {}
    if kind == "kernel":
        sources = [("kernel", args.file, ".vmlinuz")]
        if args.initrd:
            sources.append(("initrd", args.initrd, ".initrd"))
        for role, source, suffix in sources:
            fd = imagecopy.open_source(source)
            try:
                path, sha, _ = imagecopy.copy_hashing(fd, pool, args.name + suffix)
            finally:
                os.close(fd)
            made.append(path)
            files[role] = (os.path.basename(path), sha, None)
        return files
    _source_checks(args.name, args.file, args.format, args.convert)
    fd = imagecopy.open_source(args.file)
    work = None
    try:
        if args.convert:
            converted, work = imagecopy.convert(fd, args.format,
                                                os.path.join(config.state_dir, ".convert"))
            os.close(fd)
            fd, fmt = converted, "qcow2"
        else:
            fmt = args.format
        path, sha, _ = imagecopy.copy_hashing(fd, pool, f"{args.name}.{fmt}")
    finally:
        os.close(fd)
        if work:
            shutil.rmtree(work, ignore_errors=True)
    made.append(path)
    _check_header(args.name, path, fmt, os.path.basename(path))   # the copy is what counts
    files["disk"] = (os.path.basename(path), sha, fmt)
    return files


def image_users(config) -> dict[str, list[str]]:
    """Which running jobs use which image: jobs that still hold guests or files (their
    nodes' statuses, this node's job directories), by the image their guests were
    published with or, on this node, their ready event."""
    from vtorque.admin import jobinfo
    from vtorque.cluster import handoff
    events = jobinfo.read_events(config)
    users: dict[str, set[str]] = {}
    active = set(jobinfo.known_jobs(config, [], root=os.geteuid() == 0))
    for job_id in active:
        names = set()
        for node in handoff.nodes_left(config, job_id):
            status = handoff.read(config, job_id, node)
            for guest in status.guests if status else []:
                if isinstance(guest.get("image"), str):
                    names.add(guest["image"])
        ready = [e for e in events if e.get("job") == job_id and e.get("phase") == "ready"]
        if ready and isinstance(ready[-1].get("image"), str):
            names.add(ready[-1]["image"])
        for name in names:
            users.setdefault(name, set()).add(job_id)
    return {name: sorted(jobs) for name, jobs in users.items()}


def cmd_image_remove(args) -> int:
    from vtorque import config as config_mod
    from vtorque.images import Catalog, check_name
    _root("remove")
    config = config_mod.load(args.config)
    check_name(args.name)
    catalog = Catalog(config.image_pool)
    image = catalog.describe(args.name)
    jobs = image_users(config).get(args.name, [])
    if jobs and not args.force:
        raise VtorqueError(f"image {args.name!r} is used by running job(s) "
                           f"{', '.join(jobs)}; wait for them to end, or --force")
    shared = set()
    for other in catalog.names():
        if other == args.name:
            continue
        try:
            shared.update(f.path for _, f in catalog.describe(other).files())
        except VtorqueError:
            continue
    os.unlink(image.descriptor)             # first: no new job can ask for it
    kept = []
    for _role, f in image.files():
        if f.path in shared:
            kept.append(os.path.basename(f.path))
            continue
        try:
            os.unlink(f.path)
        except FileNotFoundError:
            pass
    from vtorque.vm.template_store import TemplateStore
    templates = TemplateStore(config.state_dir).remove_image(args.name)
    print(f"image {args.name} removed from {catalog.pool}")
    if templates:
        print(f"removed {len(templates)} snapshot template(s) of it from this node")
    if kept:
        print(f"kept {', '.join(kept)}: other images name it")
    if jobs:
        print(f"left running: job(s) {', '.join(jobs)}; their guests keep the removed files "
              "open until they end, and a requeued run of them is refused (image not in "
              "the pool)")
    return 0


def cmd_image_verify(args) -> int:
    from vtorque import config as config_mod
    from vtorque.images import Catalog
    from vtorque.images.pool_files import sha256_file
    config = config_mod.load(args.config)
    catalog = Catalog(config.image_pool)
    bad = 0
    for name in catalog.names():
        try:
            image = catalog.authorize(name, verify_checksums=False)
        except VtorqueError as exc:
            print(f"{name}\tBROKEN\t{exc}")
            bad += 1
            continue
        drift = []
        for role, f in image.files():
            try:
                actual = sha256_file(f.path)
            except OSError as exc:
                drift.append(f"{role} {os.path.basename(f.path)}: unreadable "
                             f"({exc.strerror or exc})")
                continue
            if actual != f.sha256:
                drift.append(f"{role} {os.path.basename(f.path)}: descriptor says "
                             f"{f.sha256}, file is {actual}")
        if drift:
            bad += 1
            print(f"{name}\tDRIFT\t" + "; ".join(drift))
        else:
            print(f"{name}\tok\t" + ", ".join(f"{r} {f.sha256[:12]}" for r, f in image.files()))
    return 1 if bad else 0


def cmd_image_list(args) -> int:
    from vtorque import config as config_mod
    from vtorque.images import Catalog
    config = config_mod.load(args.config)
    catalog = Catalog(config.image_pool)
    users = image_users(config)
    rows = []
    for name in catalog.names():
        try:
            image = catalog.describe(name)
        except VtorqueError as exc:
            rows.append({"name": name, "broken": str(exc)})
            continue
        main = image.disk or image.kernel
        size = sum(_size(f.path) for _, f in image.files())
        rows.append({"name": name, "kind": image.kind, "distro": image.distro,
                     "arch": image.arch, "size": size,
                     "digest": main.sha256 if main else None,
                     "format": image.disk.format if image.disk else None,
                     "jobs": users.get(name, [])})
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if rows:
        print("NAME\tKIND\tDISTRO\tSIZE\tDIGEST\tJOBS")
    from vtorque.units import format_mib
    for r in rows:
        if "broken" in r:
            print(f"{r['name']}\tBROKEN\t{r['broken']}")
            continue
        print(f"{r['name']}\t{r['kind']}\t{r['distro']}\t"
              f"{format_mib(max(r['size'] >> 20, 1)) if r['size'] else '0'}\t"
              f"sha256:{(r['digest'] or '?')[:12]}\t{','.join(r['jobs']) or '-'}")
    return 0


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def cmd_image_check(args) -> int:
    from vtorque import config as config_mod
    from vtorque.images import Catalog
    config = config_mod.load(args.config)
    catalog = Catalog(config.image_pool,
                      checksum_cache=os.path.join(config.state_dir, ".checksums"))
    image = catalog.authorize(args.name)
    print(f"{image.name}: authorized ({image.kind}, {image.distro}, {image.arch})")
    return 0


def add_parsers(sub) -> None:
    from vtorque.images import ARCHES, KINDS
    img = sub.add_parser("image", help="the authorized image pool")
    img_sub = img.add_subparsers(dest="action", required=True)
    lst = img_sub.add_parser("list", help="images: kind, distro, size, digest, jobs using "
                             "them")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=cmd_image_list)
    check = img_sub.add_parser("check", help="run every root-side check on one image")
    check.add_argument("name")
    check.set_defaults(func=cmd_image_check)
    add = img_sub.add_parser("add", help="copy a file into the pool and authorize it (root)",
                             description="Refuses backing files, external data files and "
                             "format mismatches, as the root side does.")
    add.add_argument("name", help="catalog name (letters, digits, '.', '_', '-')")
    add.add_argument("file", help="the disk image (kind linux, osv) or kernel (kind kernel)")
    add.add_argument("--format", choices=("qcow2", "raw", "vmdk"),
                     help="the disk's format (with --convert: raw or vmdk)")
    add.add_argument("--distro", required=True, help="distribution (-vm distro= picks it)")
    add.add_argument("--kind", choices=KINDS, default="linux", help="default: linux")
    add.add_argument("--arch", choices=ARCHES, default=ARCHES[0])
    add.add_argument("--convert", action="store_true",
                     help="store a standalone qcow2 made with qemu-img")
    add.add_argument("--initrd", help="kind kernel: the initramfs")
    add.add_argument("--cmdline", help="kind kernel: the kernel command line")
    add.add_argument("--host-share", action="store_true",
                     help="guests mount the node's root read-only (test images)")
    add.set_defaults(func=cmd_image_add)
    rm = img_sub.add_parser("remove", help="take an image out of the pool (root)")
    rm.add_argument("name")
    rm.add_argument("--force", action="store_true",
                    help="even when running jobs use it (says what it leaves)")
    rm.set_defaults(func=cmd_image_remove)
    img_sub.add_parser("verify", help="re-hash every image; report drift (exit 1)") \
        .set_defaults(func=cmd_image_verify)
