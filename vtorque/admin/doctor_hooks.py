"""`vtorque doctor`'s look at the batch system's side of this node: the hook shims that
contrib/torque_hooks/install, contrib/pbs_hooks/install.sh and contrib/slurm/install
write, the job shell, and whether they point at this installation (their Python imports
this vtorque, their config is the one checked) and, for Slurm, whether slurm.conf names
them. Pure parsers plus one probe per distinct Python."""

from __future__ import annotations

import glob
import os
import re
import stat

from vtorque import proc
from vtorque.errors import VtorqueError

DEFAULT_HOOKS = {"torque": "/var/spool/torque/mom_priv", "slurm": "/etc/slurm/vtorque",
                 "openpbs": "/etc/vtorque/openpbs-hook.py"}
TORQUE_EVENTS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel",
                 "epilogue.precancel")
MARKERS = {"torque": "vtorque shim for Torque", "slurm": "vtorque shim for Slurm",
           "openpbs": "vtorque hook for OpenPBS", "shell": "vtorque job shell"}
INSTALLERS = {"torque": "contrib/torque_hooks/install",
              "slurm": "contrib/slurm/install", "openpbs": "contrib/pbs_hooks/install.sh"}
_TORQUE_CALL = re.compile(r"^\s*(/\S+) -E -s -m vtorque\.hooks --config (/\S+) torque ",
                          re.MULTILINE)
_SHELL_CALL = re.compile(r"^exec (/\S+) -E -s -m vtorque\.jobshell --config (/\S+)",
                         re.MULTILINE)
_ASSIGN = re.compile(r"^(PYTHON|CONFIG)=(/\S+)$", re.MULTILINE)
_PBS = re.compile(r'^(VTORQUE_PYTHON|VTORQUE_CONFIG) = "(/[^"]+)"$', re.MULTILINE)


def shim_paths(text: str, kind: str) -> tuple[str | None, str | None]:
    """(python, config) a shim of `kind` runs (pure)."""
    if kind == "torque":
        match = _TORQUE_CALL.search(text)
        return (match.group(1), match.group(2)) if match else (None, None)
    if kind == "shell":
        match = _SHELL_CALL.search(text)
        return (match.group(1), match.group(2)) if match else (None, None)
    found = dict(_ASSIGN.findall(text) if kind == "slurm" else
                 ((k.split("_")[1], v) for k, v in _PBS.findall(text)))
    return found.get("PYTHON"), found.get("CONFIG")


def slurm_conf_hooks(text: str) -> dict[str, str]:
    """Prolog and Epilog as slurm.conf sets them (keys are case-insensitive; the last
    setting wins; comments dropped) (pure)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if sep and key.strip().lower() in ("prolog", "epilog"):
            out[key.strip().lower()] = value.strip()
    return out


def _ours() -> str:
    import vtorque
    return os.path.realpath(os.path.dirname(vtorque.__file__))


class _Pythons:
    """Which vtorque each shim's Python imports, asked once per Python."""

    def __init__(self):
        self.seen: dict[str, str] = {}

    def package(self, python: str) -> str:
        if python not in self.seen:
            try:
                done = proc.run([python, "-E", "-s", "-c",
                                 "import os, vtorque; "
                                 "print(os.path.realpath(os.path.dirname(vtorque.__file__)))"],
                                timeout=30, check=False)
                self.seen[python] = done.stdout.strip() if done.returncode == 0 else ""
            except VtorqueError:
                self.seen[python] = ""
        return self.seen[python]


def check_file(path: str, kind: str, config_path: str, pythons: _Pythons) -> str | None:
    """The problem with one installed shim, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != 0 or st.st_mode & 0o022:
        return f"{path} must be root's and not writable by others " \
               f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})"
    try:
        with open(path, errors="replace") as handle:
            text = handle.read(1 << 16)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if MARKERS[kind] not in text:
        return f"{path} is not vtorque's (another {kind} script)"
    python, config = shim_paths(text, kind)
    if python is None or config is None:
        return f"{path}: cannot find the Python and config it runs"
    if os.path.realpath(config) != os.path.realpath(config_path):
        return f"{path} uses config {config}, not {config_path}"
    if not os.access(python, os.X_OK):
        return f"{path} runs {python}, which is not executable"
    package = pythons.package(python)
    if not package:
        return f"{path} runs {python}, which cannot import vtorque"
    if package != _ours():
        return f"{path} runs {python}, which imports vtorque from {package}, not {_ours()}"
    return None


def hook_files(system: str, location: str) -> list[tuple[str, str]]:
    """(path, kind) of every file the installer of `system` writes at `location`."""
    if system == "torque":
        return [(os.path.join(location, e), "torque") for e in TORQUE_EVENTS]
    if system == "slurm":
        return [(os.path.join(location, e), "slurm") for e in ("prolog", "epilog")]
    return [(location, "openpbs")]


def check_hooks(config, system: str, location: str | None) -> tuple[str, str, str]:
    """(status, detail, fix) of the hook shims for `system`."""
    location = location or DEFAULT_HOOKS[system]
    pythons = _Pythons()
    problems = [p for path, kind in hook_files(system, location)
                if (p := check_file(path, kind, config.path, pythons))]
    fix = (f"run {INSTALLERS[system]} --python <this installation's python> --config "
           f"{config.path}" + (" (doctor --hooks PATH: where they are)" if system != "openpbs"
                               else " --apply"))
    if problems:
        return "fail", "; ".join(problems), fix
    detail = f"{system} shims in {location} run this vtorque with {config.path}"
    if system == "slurm":
        problem = _slurm_conf(location)
        if problem:
            return "fail", problem, "set Prolog= and Epilog= in slurm.conf to the shims " \
                                    "(contrib/slurm/install prints the lines), then " \
                                    "scontrol reconfigure"
    return "ok", detail, ""


def _slurm_conf(location: str) -> str | None:
    path = os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    try:
        with open(path) as handle:
            hooks = slurm_conf_hooks(handle.read())
    except OSError as exc:
        return f"cannot read {path} ({exc.strerror}) to see whether it runs the shims"
    for event in ("prolog", "epilog"):
        shim = os.path.realpath(os.path.join(location, event))
        named = hooks.get(event, "")
        paths = [os.path.realpath(p) for part in named.split(",") if part
                 for p in (glob.glob(part) if any(c in part for c in "*?[") else [part])]
        if shim not in paths:
            return f"{path}: {event.capitalize()}={named or '(unset)'} does not run {shim}"
    return None


def check_job_shell(config) -> tuple[str, str, str]:
    problem = check_file(config.batch.job_shell, "shell", config.path, _Pythons())
    if problem:
        return "fail", problem, "install it with the scheduler's install script " \
                                "(--job-shell PATH; config batch.job_shell)"
    return "ok", f"{config.batch.job_shell} runs this vtorque", ""
