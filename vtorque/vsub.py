"""`vsub`: submit a batch job whose script runs inside per-job virtual machines.

    vsub [qsub options] [-vm key=value[,key=value]]... [script]      (Torque, OpenPBS)
    vsub [sbatch options] [-vm key=value[,key=value]]... [script]    (Slurm)
    vsub --help

Runs on the login node as the user. Every qsub (or sbatch) option is passed through (see
qsub_options.py for how options, `#PBS -vm` / `#VSUB -vm` directives and resources are
read and rewritten); the -vm request is checked against the site's config and image
catalog with the same code the root side runs, so a bad request fails here, with one
line, and nothing is submitted. A good one is submitted with `<batch.bin_dir>/qsub` (or
`sbatch`), whose stdout, stderr and exit status vsub passes on exactly.

The config comes from $VTORQUE_CONFIG or /etc/vtorque/vtorque.yaml. No image is hashed
here (Catalog.describe only); the root side re-validates everything.

Exit status: qsub's (sbatch's) when it ran; 1 when the request, the config or the image is
refused (one line `vsub: <message>` on stderr, nothing run); 2 for a malformed option
list.
"""

from __future__ import annotations

import os
import sys

# Generous: Torque's qsub retries an unreachable server (-b, CLIENTRETRY).
QSUB_TIMEOUT = 600.0

USAGE = "usage: vsub [qsub options] [-vm key=value[,key=value]]... [script]"
USAGE_SLURM = "usage: vsub [sbatch options] [-vm key=value[,key=value]]... [script]"


def _say(message: str) -> None:
    print(f"vsub: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from vtorque.errors import VtorqueError
    from vtorque.qsub_options import UsageError
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(args)
    except UsageError as exc:
        _say(str(exc))
        return 2
    except VtorqueError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001  (never a traceback for the user)
        _say(f"internal error ({type(exc).__name__}: {exc})")
        return 1


def _main(argv: list[str]) -> int:
    if "--help" in argv:
        return print_help()
    from vtorque import qsub_options as qo
    from vtorque.errors import VtorqueError
    try:
        config, config_error = _load_config(), None
    except VtorqueError as exc:          # reported after the options, as before
        config, config_error = None, exc
    if config is not None and _system(config) == "slurm":
        return _main_slurm(argv, config, qo)
    parsed = qo.parse_args(argv)
    qo.refuse_interactive(parsed)
    if config_error is not None:
        raise config_error
    system = _system(config)
    command = _command_path(config, system)
    if parsed.long_options:                     # --version / --about: qsub's own answer
        return _run([command, *parsed.long_options], None, os.environ)
    script = _read_script(parsed, qo)
    for directive in script.directives.directives:
        qo.refuse_interactive(directive.parsed, f"script line {directive.line}: ")
    qo.check_no_job_variable(parsed, script.directives)
    encoded, need = _check_request(list(parsed.vm_texts) + script.directives.vm_texts,
                                   config, qo)
    submission = qo.build_submission(system, parsed, script, encoded, need,
                                     config.batch.job_shell)
    for note in submission.notes:
        _say(note)
    env = {k: v for k, v in os.environ.items() if k != qo.JOB_VARIABLE}
    if submission.script_copy is None:
        return _run(submission.argv(command), submission.stdin, env)
    return _run_with_copy(submission, command, env, QSUB_TIMEOUT,
                          os.path.basename(script.path or "STDIN"))


def _main_slurm(argv: list[str], config, qo) -> int:
    """vsub with sbatch: sbatch's options, the request in the job's comment, the script
    wrapped for the job shell (qsub_options, section Slurm)."""
    parsed = qo.parse_sbatch_args(argv, environ=os.environ)
    if parsed.has("help"):
        return print_help()
    command = _command_path(config, "slurm")
    straight = [w for o in parsed.options if {"usage", "version"} & set(o.names)
                for w in o.words]
    if straight:                             # --usage / --version: sbatch's own answer
        return _run([command, *straight], None, os.environ)
    wrap = parsed.values("wrap")
    if wrap:
        if parsed.script is not None:
            raise qo.UsageError("--wrap and a script cannot be given together")
        script = qo.read_sbatch_script(None, qo.WRAP_HEADER + wrap[-1] + "\n")
    else:
        script = qo.read_sbatch_script(parsed.script, _read_text(parsed.script))
    encoded, need = _check_request(list(parsed.vm_texts) + script.vm_texts, config, qo)
    submission = qo.build_submission("slurm", parsed, script, encoded, need,
                                     config.batch.job_shell)
    for note in submission.notes:
        _say(note)
    env = {k: v for k, v in os.environ.items() if k != qo.JOB_VARIABLE}
    timeout = None if submission.wait else QSUB_TIMEOUT
    if submission.script_copy is None:
        return _run(submission.argv(command), submission.stdin, env, timeout)
    return _run_with_copy(submission, command, env, timeout,
                          submission.copy_name or os.path.basename(script.path or "STDIN"))


def _read_text(path: str | None) -> str:
    """The script file's text (bytes kept through surrogateescape), or stdin's."""
    from vtorque.errors import UserError
    if path is None:
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError("the job script on standard input is not UTF-8 text") from None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read the job script {path}: {exc.strerror or exc}") from None
    return data.decode("utf-8", "surrogateescape")


def _run_with_copy(submission, command: str, env: dict, timeout, name: str) -> int:
    """Submit with the (rewritten) script passed as a private copy named like the user's
    script, since qsub and sbatch name the job after the file."""
    import tempfile
    from vtorque.errors import UserError
    with tempfile.TemporaryDirectory(prefix="vsub.") as tmp:
        copy = os.path.join(tmp, name)
        try:
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(submission.script_copy.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            raise UserError(f"cannot write a copy of the job script in {tmp}: "
                            f"{exc.strerror or exc}") from None
        return _run(submission.argv(command, copy), None, env, timeout)


def _load_config():
    from vtorque import config as config_mod
    return config_mod.load(config_mod.resolve_path())


def _system(config) -> str:
    """batch.system, or for `auto` what batch.bin_dir holds: Slurm when sbatch and scontrol
    are there (checked first, as vtorque.batch.base.detect does: Slurm's optional
    slurm-torque package puts qsub wrappers next to them, and a job submitted through
    those would carry no request the Slurm hooks can read), else Torque/OpenPBS (qsub)."""
    system = config.batch.system
    if system != "auto":
        return system
    from vtorque.batch.base import SLURM_MARKERS
    if all(os.access(os.path.join(config.batch.bin_dir, c), os.X_OK) for c in SLURM_MARKERS):
        return "slurm"
    return "torque"


def _command_path(config, system: str) -> str:
    from vtorque.errors import NodeError
    from vtorque.qsub_options import SUBMIT_COMMANDS
    name = SUBMIT_COMMANDS.get(system, "qsub")
    path = os.path.join(config.batch.bin_dir, name)
    if not os.access(path, os.X_OK):
        raise NodeError(f"{path} not found or not executable (config key batch.bin_dir in "
                        f"{config.path})")
    return path


def _read_script(parsed, qo):
    """The job script from its file or, as qsub does without a script argument, stdin."""
    text = _read_text(parsed.script)
    prefix = qo.directive_prefix(parsed, os.environ)
    return qo.JobScript(parsed.script, text, qo.read_directives(text, prefix))


def _check_request(texts: list[str], config, qo):
    """Validate the -vm request as the root side will; return (encoded pairs, footprint)."""
    from vtorque.images import Catalog
    from vtorque.request import build_request, check_image_matches, encode_pairs, image_name
    from vtorque.request import split_pairs
    pairs = split_pairs(texts)
    request = build_request(pairs, config)
    catalog = Catalog(config.image_pool)
    name = image_name(request, catalog)
    check_image_matches(request, catalog.describe(name))
    if not pairs:
        # An empty VTORQUE_VM would read as "no VMs": name the image resolved now.
        pairs = {"img": name}
    need = qo.footprint(request.vcpus, request.ram_mib, request.vms_per_node,
                        config.host_reserve.cores, config.host_reserve.memory)
    return encode_pairs(pairs), need


def _run(argv: list[str], stdin: str | None, env,
         timeout: float | None = QSUB_TIMEOUT) -> int:
    """Run the submit command; pass its stdout, stderr and exit status on unchanged."""
    from vtorque import proc
    from vtorque.errors import CommandError, NodeError
    try:
        result = proc.run(argv, timeout=timeout, check=False, env=env, input=stdin)
    except CommandError as exc:
        if exc.timed_out:
            raise NodeError(f"{argv[0]} did not finish within {timeout or 0:.0f} s and was "
                            "stopped; check qstat before submitting again") from None
        raise NodeError(f"cannot run {argv[0]}: {exc.stderr.strip() or exc}") from None
    except UnicodeError:
        raise NodeError(f"{argv[0]}: the job script or its output is not text in this "
                        "locale's encoding") from None
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    sys.stderr.flush()
    return result.returncode if result.returncode >= 0 else 128 - result.returncode


def print_help() -> int:
    """The usage, then every -vm key with this site's default and limits."""
    from vtorque.errors import VtorqueError
    from vtorque.request import KEY_HELP, VM_KEYS
    site: dict[str, str] = {}
    try:
        config, problem = _load_config(), None
    except VtorqueError as exc:
        config, problem = None, exc
    if config is not None and _system(config) == "slurm":
        out = [USAGE_SLURM, "",
               "Submits a batch job whose script runs inside virtual machines that exist",
               "only for the life of the job. Every sbatch option is passed to sbatch",
               "(script arguments and heterogeneous jobs are not supported). -vm (or --vm)",
               "requests may be repeated and may also be given as '#VSUB -vm key=value'",
               "lines in the script's leading comment block, next to its #SBATCH lines; a",
               "key may be given only once. The request travels in the job's comment",
               "(vtorque:...; a comment of yours is kept after it). vsub raises --mincpus",
               "and --mem (or --mem-per-cpu) so that each node holds the guests plus the",
               "host's reserve, and prints exactly what sbatch prints.", ""]
    else:
        out = [USAGE, "",
               "Submits a batch job whose script runs inside virtual machines that exist",
               "only for the life of the job. Every qsub option is passed to qsub",
               "(interactive -I is not supported). -vm requests may be repeated and may",
               "also be given as '#PBS -vm key=value' lines in the script's leading",
               "directive block; a key may be given only once. vsub raises -l nodes/ppn and",
               "-l mem so that each node holds the guests plus the host's reserve, and",
               "prints exactly what qsub prints.", ""]
    if config is None:
        out.append(f"VM keys (site values are unavailable: {problem}):")
    else:
        site = _site_values(config)
        out.append(f"VM keys (site defaults and limits from {config.path}):")
    for key in VM_KEYS:
        out.append(f"  {key:<14}{KEY_HELP[key]}")
        if key in site:
            out.append(f"  {'':<14}{site[key]}")
    if "reserve" in site:
        out += ["", site["reserve"]]
    print("\n".join(out))
    return 0


def _site_values(config) -> dict[str, str]:
    from vtorque.config import ARCHES, FS_TYPES
    from vtorque.units import format_mib
    d, lim = config.defaults, config.limits

    def yes_no(value: bool) -> str:
        return "yes" if value else "no"

    images = "unavailable"
    try:
        from vtorque.images import Catalog
        images = ", ".join(Catalog(config.image_pool).names()) or "none"
    except Exception:  # noqa: BLE001  (help must print whatever happens to the pool)
        pass
    return {
        "img": f"default: {d.img or 'none'}; images: {images}",
        "distro": f"default: {d.distro or 'none'}",
        "arch": f"default: {d.arch}; one of {', '.join(ARCHES)}",
        "vcpus": f"default: {d.vcpus}; at most {lim.vcpus}",
        "ram": f"default: {format_mib(d.ram)}; from {format_mib(lim.min_ram)} to "
               f"{format_mib(lim.ram)}",
        "vms_per_node": f"default: {d.vms_per_node}; at most {lim.vms_per_node}",
        "vcpu_pinning": f"default: {yes_no(d.vcpu_pinning)}",
        "disk": f"default: {format_mib(d.disk) if d.disk else '0 (none)'}; at most "
                f"{format_mib(lim.disk)}",
        "vm_prologue": "default: none",
        "vm_epilogue": "default: none",
        "vrdma": f"default: {yes_no(d.vrdma)}",
        "fs_type": f"default: {d.fs_type}; one of {', '.join(FS_TYPES)}",
        "reserve": f"Each node also keeps {config.host_reserve.cores} core(s) and "
                   f"{format_mib(config.host_reserve.memory)} of memory for the host "
                   "(host_reserve).",
    }


if __name__ == "__main__":
    sys.exit(main())
