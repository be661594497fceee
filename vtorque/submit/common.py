"""What every vsub submission does, whatever the batch system: read the script, check
the -vm request as the root side will, run the submit command and pass its output on."""

from __future__ import annotations

import os
import sys

from vtorque.errors import CommandError, NodeError, UserError

# Generous: Torque's qsub retries an unreachable server (-b, CLIENTRETRY).
SUBMIT_TIMEOUT = 600.0


def say(message: str) -> None:
    print(f"vsub: {message}", file=sys.stderr, flush=True)


def command_path(config, name: str) -> str:
    """The submit command in batch.bin_dir (never searched on PATH)."""
    path = os.path.join(config.batch.bin_dir, name)
    if not os.access(path, os.X_OK):
        raise NodeError(f"{path} not found or not executable (config key batch.bin_dir in "
                        f"{config.path})")
    return path


def read_text(path: str | None) -> str:
    """The script file's text (bytes kept through surrogateescape), or stdin's."""
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


def check_request(texts: list[str], config):
    """Validate the -vm request as the root side will; return (encoded pairs, footprint)."""
    from vtorque.images import Catalog
    from vtorque.request import build_request, check_image_matches, encode_pairs, image_name
    from vtorque.request import split_pairs
    pairs = split_pairs(texts)
    request = build_request(pairs, config)
    catalog = Catalog(config.image_pool)
    name = image_name(request, catalog)
    check_image_matches(request, catalog.describe(name), config)
    if not pairs:
        # An empty VTORQUE_VM would read as "no VMs": name the image resolved now.
        pairs = {"img": name}
    return encode_pairs(pairs), footprint_of(request, config)


def footprint_of(request, config):
    """What each node must give the job: the guests' vCPUs and the memory as every node
    counts it against the job's allocation (RAM, QEMU's overhead, a scratch disk on
    ramdisk), plus the host's reserve: a job vsub sized always fits."""
    from vtorque.request import guests_memory_mib
    from vtorque.submit.submission import footprint
    return footprint(request.vcpus, request.ram_mib, request.vms_per_node,
                     config.host_reserve.cores, config.host_reserve.memory,
                     guests_mib=guests_memory_mib(request, rank0_here=True))


def run_command(argv: list[str], stdin: str | None, env,
                timeout: float | None = SUBMIT_TIMEOUT) -> int:
    """Run the submit command; pass its stdout, stderr and exit status on unchanged."""
    from vtorque import proc
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


def run_with_copy(submission, command: str, env: dict, timeout, name: str) -> int:
    """Submit with the (rewritten) script passed as a private copy named like the user's
    script, since qsub and sbatch name the job after the file."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="vsub.") as tmp:
        copy = os.path.join(tmp, name)
        try:
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(submission.script_copy.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            raise UserError(f"cannot write a copy of the job script in {tmp}: "
                            f"{exc.strerror or exc}") from None
        return run_command(submission.argv(command, copy), None, env, timeout)
