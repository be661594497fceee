"""`vtorque`: the admin's, the users' and the hooks' command.

    vtorque status [JOB] [--json]
    vtorque ssh JOB [RANK] [-- COMMAND]     vtorque console JOB [RANK] [--follow]
    vtorque doctor [--json] [--hooks PATH]
    vtorque config check [--config PATH]
    vtorque image list|verify | image check|remove NAME | image add NAME FILE ...
    vtorque metrics [--write]
    vtorque vm up --job ID --request 'img=NAME,vcpus=1,ram=256M,vms_per_node=2'
    vtorque vm list [--job ID]
    vtorque vm down --job ID
    vtorque reap [--dry-run]
    vtorque hook torque prologue|prologue.parallel|epilogue|epilogue.parallel ARGS...

Exit status: 0 success, 1 failure (one line on stderr naming the problem), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from vtorque import config as config_mod
from vtorque.errors import ConfigError, NodeError, VtorqueError


def _load(args) -> config_mod.Config:
    return config_mod.load(args.config)


def cmd_config_check(args) -> int:
    path = config_mod.resolve_path(args.config)
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}")
        return 1
    from vtorque.config.trust import path_problems
    problems = path_problems(cfg)
    for problem in problems:
        print(f"{path}: {problem}")
    if problems:
        return 1
    print("ok")
    return 0


def cmd_vm_up(args) -> int:
    from vtorque.epilogue.teardown import clean_node
    from vtorque.prologue.guests import bring_up
    from vtorque.request import parse_request
    cfg = _load(args)
    request = parse_request(args.request, cfg)
    try:
        keys = None
        if args.user:       # guests started by hand: the keys of this start alone
            import time
            from vtorque.mpi.sshkeys import scope_for
            keys = scope_for(args.job, args.user, int(time.time()))
        # Marked like a batch job's guests: an epilogue of that id must not skip them.
        from vtorque import markers
        try:
            markers.mark(cfg, args.job)
        except OSError as exc:
            raise NodeError(f"cannot mark job {args.job} on this node: "
                            f"{exc.strerror or exc}") from None
        result, _ = bring_up(args.job, request, cfg, user=args.user, keys=keys)
    except VtorqueError as exc:
        try:        # give back what this call took (the address block above all)
            clean_node(args.job, cfg)
        except VtorqueError as cleanup:
            exc.message = f"{exc}; cleanup also failed: {cleanup}"
        raise
    if args.json:
        print(json.dumps({"job": result.job_id, "seconds": round(result.seconds, 3),
                          "guests": [g.__dict__ for g in result.guests]}))
    else:
        for guest in result.guests:
            how = " (from the snapshot template)" if guest.started == "snapshot" else ""
            print(f"{guest.name}\trank {guest.rank}\t{guest.hostname}\tready after "
                  f"{guest.ready_seconds:.1f} s{how}")
        print(f"job {result.job_id}: {len(result.guests)} guest(s) up in "
              f"{result.seconds:.1f} s")
        if result.snapshot_note:
            print(f"note: not from a snapshot template: {result.snapshot_note}")
    return 0


def cmd_vm_list(args) -> int:
    from vtorque.vm import lifecycle
    cfg = _load(args)
    guests = lifecycle.list_guests(cfg, args.job)
    if args.json:
        print(json.dumps([g.__dict__ for g in guests]))
        return 0
    if guests:
        print("JOB\tRANK\tDOMAIN\tSTATE")
    for guest in guests:
        print(f"{guest.job_id}\t{guest.rank}\t{guest.name}\t{guest.state}")
    return 0


def cmd_vm_down(args) -> int:
    from vtorque.epilogue.teardown import clean_node
    cfg = _load(args)
    destroyed = clean_node(args.job, cfg, domains=True)
    print(f"job {args.job}: {len(destroyed)} guest(s) destroyed, job files removed")
    return 0


def cmd_ib_list(args) -> int:
    """The node's RDMA adapters, their functions and which job holds each."""
    from vtorque.ibverbs import pool, sysfs
    cfg = _load(args)
    ib = cfg.ibverbs
    hcas = sysfs.discover(ib.sysfs_root)
    held = {a.pci: a for a in pool.assignments(cfg)}
    usable = {h.name for h in sysfs.usable(hcas, ib.devices)}
    if not hcas:
        print("no InfiniBand or RoCE adapter on this node")
    for hca in hcas:
        ports = ", ".join(f"port {p.number} {p.state or '?'} {p.link_layer} {p.rate}".rstrip()
                          for p in hca.ports)
        free = sum(1 for vf in hca.vfs if vf.pci not in held and vf.driver != "vfio-pci")
        use = "used for guests" if hca.name in usable else "not used for guests"
        print(f"{hca.name}\t{hca.pci}\t{hca.hca_type} fw {hca.fw_ver}\t{ports}")
        print(f"  SR-IOV: {hca.sriov_enabled} of {hca.sriov_total} functions enabled, "
              f"{free} free, {use}")
        for vf in hca.vfs:
            a = held.get(vf.pci)
            who = f"job {a.job_id} rank {a.rank} (port GUID {a.port_guid})" if a else \
                ("busy: bound to vfio-pci outside vtorque" if vf.driver == "vfio-pci"
                 else "free")
            print(f"  vf{vf.index}\t{vf.pci}\t{vf.driver or 'unbound'}\t{who}")
    fallback = "allowed" if ib.soft_roce else "not allowed"
    print(f"Soft-RoCE fallback: {fallback}")
    stale = [a for a in held.values() if a.hca not in {h.name for h in hcas}]
    for a in stale:
        print(f"assigned but not present: {a.pci} ({a.hca}) job {a.job_id}")
    return 0


def cmd_hook(args) -> int:
    from vtorque import hooks
    return hooks.main(args.scheduler, args.event, args.args, args.config)


def cmd_job_shell(args) -> int:
    from vtorque.jobshell import main
    return main(args.args, args.config)


def cmd_reap(args) -> int:
    from vtorque.admin.reaper import reap, reap_template_guests
    from vtorque.batch import registry
    cfg = _load(args)
    verdicts = reap(cfg, registry.get(cfg.batch.system, cfg.batch.bin_dir),
                    dry_run=args.dry_run)
    verdicts += reap_template_guests(cfg, dry_run=args.dry_run)
    for v in verdicts:
        print(f"{v.job_id}\t{v.action}\t{v.reason}")
    return 1 if any(v.action == "unknown" for v in verdicts) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtorque", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: $VTORQUE_CONFIG or "
                        f"{config_mod.DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)

    cfg = sub.add_parser("config", help="the site configuration")
    cfg_sub = cfg.add_subparsers(dest="action", required=True)
    check = cfg_sub.add_parser("check", help="validate the config file; print ok or problems")
    check.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    check.set_defaults(func=cmd_config_check)

    from vtorque.admin import doctor, imagecmd, login, metrics, status
    status.add_parser(sub)
    login.add_parsers(sub)
    doctor.add_parser(sub)
    imagecmd.add_parsers(sub)
    metrics.add_parser(sub)

    vm = sub.add_parser("vm", help="a job's guests on this node")
    vm_sub = vm.add_subparsers(dest="action", required=True)
    vm_up = vm_sub.add_parser("up", help="start a job's guests and wait until they answer")
    vm_up.add_argument("--job", required=True, help="job id")
    vm_up.add_argument("--request", required=True, action="append",
                       help="key=value[,key=value] (repeatable)")
    vm_up.add_argument("--user", help="let this user log into the guests over SSH with the "
                       "job's key (needs secret_file and a guest image with sshd)")
    vm_up.add_argument("--json", action="store_true", help="machine-readable output")
    vm_up.set_defaults(func=cmd_vm_up)
    vm_list = vm_sub.add_parser("list", help="list vtorque guests on this node")
    vm_list.add_argument("--job", help="only this job's guests")
    vm_list.add_argument("--json", action="store_true", help="machine-readable output")
    vm_list.set_defaults(func=cmd_vm_list)
    vm_down = vm_sub.add_parser("down", help="destroy a job's guests and files (idempotent)")
    vm_down.add_argument("--job", required=True, help="job id")
    vm_down.set_defaults(func=cmd_vm_down)
    ib = sub.add_parser("ib", help="RDMA adapters and virtual functions of this node")
    ib_sub = ib.add_subparsers(dest="ib_command", required=True)
    ib_sub.add_parser("list", help="adapters, ports, functions free or held by which job") \
        .set_defaults(func=cmd_ib_list)
    hook = sub.add_parser("hook", help="batch-system hook entry (called by the shims in "
                          "contrib/)")
    hook.add_argument("scheduler", choices=("torque", "openpbs", "slurm"))
    hook.add_argument("event", help="e.g. prologue, prologue.parallel, epilogue")
    hook.add_argument("args", nargs=argparse.REMAINDER, help="the batch system's arguments")
    hook.set_defaults(func=cmd_hook)
    reap_p = sub.add_parser("reap", help="remove guests and files of jobs that no longer "
                            "run here (run at boot and from cron)")
    reap_p.add_argument("--dry-run", action="store_true", help="only say what would go")
    reap_p.set_defaults(func=cmd_reap)
    shell = sub.add_parser("job-shell", help="run a job script in guest rank 0 (the shell "
                           "vsub gives VM jobs; runs as the job owner)")
    shell.add_argument("args", nargs=argparse.REMAINDER, help="[script]")
    shell.set_defaults(func=cmd_job_shell)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() == 0:
        os.umask(0o022)     # what root makes has the modes it asks for (see hooks)
    try:
        if getattr(args, "job", None) is not None:
            from vtorque import jobid
            jobid.check(args.job, "--job")
        return args.func(args)
    except VtorqueError as exc:
        print(f"vtorque: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vtorque: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
