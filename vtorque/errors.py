"""The one exception hierarchy of vtorque.

Every error carries a one-line message meant for a human. Only entry points (cli, vsub,
hooks) turn exceptions into exit codes; they tell two families apart:

- UserError: the job's request is at fault (bad -vm value, unauthorized image). A batch hook
  aborts the job; requeueing would fail the same way again.
- NodeError: this node or the site's setup is at fault (libvirtd down, config broken, guest
  never answered). A batch hook requeues the job so it can run elsewhere.
"""

from __future__ import annotations


class VtorqueError(Exception):
    """Base of all vtorque errors; str() is the one-line message shown to people."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(VtorqueError):
    """The submitted job is wrong; retrying it elsewhere cannot help."""


class RequestError(UserError):
    """A -vm request is malformed or out of the site's limits."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class ImageError(UserError):
    """The requested image is not an authorized catalog image (or no longer is)."""


class UsageError(UserError):
    """A command line (or a script directive) is not a valid option list."""


class Unsupported(UserError):
    """A valid batch request that VM jobs do not support."""


class RecordError(UserError):
    """A VM job's record from the batch server cannot be read unambiguously: text the user
    controls forged or broke its structure (a repeated attribute, a forged line). The job
    is refused; the node stays in service."""


class CommandRefused(UserError):
    """A job command cannot be passed to the guest unchanged (OSv's command parser)."""


class NodeError(VtorqueError):
    """This node or the site configuration failed; the job may succeed elsewhere."""


class ConfigError(NodeError):
    """The configuration file is missing or invalid. Holds every problem found."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "invalid"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"config {path}: {first}{more}")


class JobIdError(NodeError):
    """A job id that no batch system prints (it came from the batch system or an admin;
    acting on it could touch another job's files)."""


class UnknownJobError(NodeError):
    """The batch server does not know the job (never existed, or purged from its history).

    A NodeError for the hooks (the server may lag), but the reaper can tell "gone" from
    "server unreachable" (plain NodeError/CommandError) and reaps only on this one.
    """

    def __init__(self, scheduler: str, job_id: str, detail: str = ""):
        self.scheduler = scheduler
        self.job_id = job_id
        msg = f"{scheduler}: job {job_id} is unknown to the batch server"
        super().__init__(f"{msg} ({detail})" if detail else msg)


class CommandError(NodeError):
    """A subprocess failed or timed out; carries what is needed to understand why."""

    def __init__(self, argv: list[str], returncode: int | None, stdout: str, stderr: str,
                 timed_out: bool = False):
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.timed_out = timed_out
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if timed_out:
            msg = f"command timed out: {argv[0]}"
        else:
            msg = f"command failed with exit status {returncode}: {argv[0]}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class HypervisorError(NodeError):
    """libvirt or QEMU refused or failed an operation."""


class SavedStateError(HypervisorError):
    """QEMU could not load a saved guest state (a snapshot template's)."""


class GuestTimeout(NodeError):
    """A guest did not answer within the configured time."""


class GuestError(NodeError):
    """A guest reported that its own set-up failed (a vtorque-error console line)."""


class ResourceError(NodeError):
    """The node lacks what the job needs now (disk space, free devices)."""


class OsvError(NodeError):
    """The OSv guest or its REST API failed; the program's own status is unknown."""


class GuestGone(OsvError):
    """The OSv guest stopped answering for longer than the grace period."""


class OsvHttpError(OsvError):
    """OSv's REST API answered with an HTTP error status."""

    def __init__(self, message: str, code: int, detail: str):
        super().__init__(message)
        self.code = code
        self.detail = detail


class TeardownError(NodeError):
    """Teardown could not remove everything; lists every leftover it could not remove."""

    def __init__(self, job_id: str, failures: list[str]):
        self.job_id = job_id
        self.failures = list(failures)
        super().__init__(f"teardown of job {job_id} incomplete: " + "; ".join(self.failures))
