"""`vtorque ssh JOB [RANK] [-- COMMAND]` and `vtorque console JOB [RANK]`: the job owner
into a guest of a running job, and the guest's serial console log.

ssh uses only what the prologue left for the owner on the mother superior (the job's
user directory, 0700 and the owner's): the job's own key and the guests' pinned host keys,
through the job's ssh_config. No new trust: nothing is added to the user's ~/.ssh and no
host key is ever accepted on first sight. Anyone but the owner is refused, root included
(root logs in as the owner with `su - OWNER -c 'vtorque ssh JOB'`).

console prints the console log libvirt's virtlogd keeps in the job's directory on the
node that runs the guest, read-only, control characters removed (a guest must not drive
the reader's terminal); `--follow` keeps printing until the guest is gone.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import time

from vtorque.errors import VtorqueError

SSH = "/usr/bin/ssh"
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HOSTFILE_LINE = re.compile(r"(\S+) slots=\d+")


def clean_console(text: str) -> str:
    """Console output safe for a terminal: escape sequences and control characters gone,
    line ends kept (pure)."""
    text = text.replace("\r\n", "\n")
    return _CONTROL.sub("", _ANSI.sub("", text))


def guest_names(hostfile_text: str) -> list[str]:
    """Guest host names of the job in rank order, from its Open MPI hostfile (pure)."""
    return [m.group(1) for line in hostfile_text.splitlines()
            if (m := _HOSTFILE_LINE.fullmatch(line.strip()))]


def split_rank(rest: list[str]) -> tuple[int, list[str]]:
    """[RANK] [--] [COMMAND...] -> (rank, command)."""
    rank = 0
    if rest and rest[0] != "--" and rest[0].isdigit():
        rank, rest = int(rest[0]), rest[1:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    return rank, rest


def _setup(args):
    from vtorque import config as config_mod
    from vtorque import jobid
    from vtorque.admin import jobinfo
    from vtorque.cluster import handoff
    config = config_mod.load(args.config)
    jobid.check(args.job_id, "job")
    recorded = sorted({s.job_id for k in handoff.job_keys(config)
                       for n in handoff.nodes_left_in(config, k)
                       if (s := handoff.read_key(config, k, n)) is not None and s.job_id})
    return config, jobinfo.resolve_id(args.job_id, recorded)


def _rank_node(config, job_id: str, rank: int) -> str | None:
    """The node whose published guests include `rank`."""
    from vtorque.cluster import handoff
    for node in handoff.nodes_left(config, job_id):
        status = handoff.read(config, job_id, node)
        if status is not None and any(g.get("rank") == rank for g in status.guests):
            return status.node or node
    return None


def _not_here(config, job_id: str, rank: int, what: str) -> VtorqueError:
    from vtorque.node import node_name
    node = _rank_node(config, job_id, rank)
    here = node_name(config.node_name)
    if node and node.split(".")[0] != here.split(".")[0]:
        return VtorqueError(f"job {job_id}: guest rank {rank} runs on node {node}; run "
                            f"vtorque {what} there")
    return VtorqueError(f"job {job_id} has no running guests on this node ({here}): not "
                        "started yet, over, or not a VM job")


def cmd_ssh(args) -> int:
    from vtorque.journal import JobPaths
    config, job_id = _setup(args)
    rank, command = split_rank(args.rest)
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    try:
        st = os.lstat(paths.user_dir)
    except FileNotFoundError:
        raise _not_here(config, job_id, 0, "ssh") from None
    if not stat.S_ISDIR(st.st_mode):
        raise VtorqueError(f"job {job_id}: {paths.user_dir} is not a directory")
    if st.st_uid != os.getuid():
        raise VtorqueError(f"job {job_id} belongs to another user; only its owner may log "
                           "into its guests")
    if st.st_mode & 0o077:
        raise VtorqueError(f"job {job_id}: {paths.user_dir} is open to others "
                           f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use its key")
    try:
        with open(os.path.join(paths.user_dir, "hostfile")) as handle:
            names = guest_names(handle.read())
        with open(os.path.join(paths.user_dir, "guest-kind")) as handle:
            kind = handle.read().strip()
    except OSError as exc:
        raise VtorqueError(f"job {job_id}: cannot read its files in {paths.user_dir}: "
                           f"{exc.strerror}") from None
    if kind == "osv":
        raise VtorqueError(f"job {job_id} runs OSv guests, which have no shell to log into")
    if not 0 <= rank < len(names):
        raise VtorqueError(f"job {job_id} has guest ranks 0 to {len(names) - 1}, not {rank}")
    argv = [SSH, "-F", os.path.join(paths.user_dir, "ssh_config")]
    argv.append("-t" if not command and sys.stdin.isatty() else "-T")
    argv += [names[rank], *command]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/"),
           "LANG": os.environ.get("LANG", "C.UTF-8")}
    if os.environ.get("TERM"):
        env["TERM"] = os.environ["TERM"]
    sys.stdout.flush()
    try:
        os.execve(SSH, argv, env)      # the session is ssh's: its exit status is ours
    except OSError as exc:
        raise VtorqueError(f"cannot run {SSH}: {exc.strerror}") from None
    return 255


def _console_owner(config, job_id: str) -> str | None:
    from vtorque.admin import jobinfo
    adapter, problem = jobinfo.batch_adapter(config)
    return jobinfo.gather(config, job_id, adapter, problem, events=[], root=False).owner


def cmd_console(args) -> int:
    from vtorque.admin import jobinfo
    from vtorque.journal import JobPaths
    config, job_id = _setup(args)
    rank, extra = split_rank(args.rest)
    if extra:
        raise VtorqueError("console takes JOB and an optional RANK only")
    if os.geteuid() != 0:
        owner = _console_owner(config, job_id)
        if owner != jobinfo.me():
            raise VtorqueError(f"job {job_id} belongs to another user; only its owner may "
                               "read its console" if owner else
                               f"cannot tell whose job {job_id} is; refusing its console")
    paths = JobPaths.for_job(job_id, config.state_dir, config.ramdisk_dir)
    from vtorque.vm.spec import domain_name
    log = os.path.join(paths.job_dir, f"{domain_name(paths, rank)}.console.log")
    try:
        fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _not_here(config, job_id, rank, "console") from None
    except PermissionError:
        raise VtorqueError(f"job {job_id}: the console log of guest rank {rank} is "
                           "readable only by root on this node; ask an administrator to "
                           f"run: vtorque console {job_id} {rank}") from None
    except OSError as exc:
        raise VtorqueError(f"job {job_id}: cannot open {log}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise VtorqueError(f"job {job_id}: {log} is not a regular file")
        _print(handle.read())
        while args.follow and os.path.lexists(log):
            time.sleep(0.5)
            _print(handle.read())
    return 0


def _print(data: bytes) -> None:
    if data:
        sys.stdout.write(clean_console(data.decode(errors="replace")))
        sys.stdout.flush()


def add_parsers(sub) -> None:
    ssh = sub.add_parser("ssh", help="log into a guest of your running job (its own key "
                         "and pinned host keys)",
                         description="Run on the job's first node. RANK defaults to 0; a "
                         "COMMAND after -- runs instead of a login shell.")
    ssh.add_argument("job_id", metavar="JOB", help="job id")
    ssh.add_argument("rest", nargs=argparse.REMAINDER, metavar="[RANK] [-- COMMAND ...]",
                     help="guest rank (default 0), then the command to run")
    ssh.set_defaults(func=cmd_ssh)
    console = sub.add_parser("console", help="print a guest's serial console log "
                             "(read-only)",
                             description="Run on the node that runs the guest.")
    console.add_argument("job_id", metavar="JOB", help="job id")
    console.add_argument("rest", nargs="*", metavar="RANK", help="guest rank (default 0)")
    console.add_argument("-f", "--follow", action="store_true",
                         help="keep printing until the guest is gone (Ctrl-C ends)")
    console.set_defaults(func=cmd_console)
