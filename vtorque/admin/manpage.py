"""Man pages for `vtorque` and `vsub`, generated from what the commands themselves use:
vtorque's argument parser (every subcommand, argument and help text) and vsub's usage
lines, -vm keys, their help and the shipped defaults. scripts/build-man writes them to
man/; a unit test keeps the committed pages equal to what this module makes."""

from __future__ import annotations

import argparse

SEE_ALSO = r"""
.SH SEE ALSO
.BR vsub (1),
.BR vtorque (1);
docs/user-guide.md and docs/admin-guide.md in the vtorque sources
(installed under share/doc/vtorque).
"""


def esc(text: str) -> str:
    """Text safe for roff: backslashes, hyphens, a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _header(name: str, title: str) -> list[str]:
    from importlib import metadata
    try:
        version = metadata.version("vtorque")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return [f'.TH {name.upper()} 1 "" "vtorque {esc(version)}" "vtorque"', ".SH NAME",
            f"{name} \\- {esc(title)}"]


def _usage(action: argparse.Action) -> str:
    if action.option_strings:
        flag = ", ".join(action.option_strings)
        if action.nargs == 0:
            return flag
        return f"{flag} {action.metavar or action.dest.upper()}"
    return str(action.metavar or action.dest)


def _commands(parser: argparse.ArgumentParser, prefix: str, out: list[str],
              summary: str = "") -> None:
    """Every leaf command under `parser`, with its own arguments."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        args = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)
                and a.help != argparse.SUPPRESS]
        words = " ".join(f"[{_usage(a)}]" if (a.option_strings and not a.required)
                         or a.nargs in ("?", "*")
                         else _usage(a) for a in args)
        out += [".TP", f"\\fB{esc(prefix)}\\fR {esc(words)}".rstrip()]
        text = parser.description or ""
        out.append(esc(summary))
        if text:
            out += [".br", esc(text)]
        for a in args:
            if a.help:
                out += [".br", f"\\fI{esc(_usage(a))}\\fR: {esc(a.help)}"]
        return
    for action in subs:
        helps = {c.dest: c.help for c in action._choices_actions}
        for name, child in action.choices.items():
            _commands(child, f"{prefix} {name}", out, helps.get(name) or "")


def vtorque_page() -> str:
    from vtorque.admin.cli import build_parser
    parser = build_parser()
    lines = _header("vtorque", "run batch jobs in per-job virtual machines: status, ssh, "
                    "doctor, images, metrics, the hooks' entry")
    lines += [".SH SYNOPSIS", "\\fBvtorque\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] "
              "\\fICOMMAND\\fR [\\fIARGS\\fR...]", ".SH DESCRIPTION",
              esc(parser.description or ""), ".PP",
              "The config file is \\fI/etc/vtorque/vtorque.yaml\\fR, or "
              "\\fB$VTORQUE_CONFIG\\fR, or \\fB\\-\\-config\\fR.", ".SH COMMANDS"]
    _commands(parser, "vtorque", lines)
    lines += [".SH EXIT STATUS", "0 success; 1 failure, with one line on standard error "
              "naming the problem; 2 a usage error.", ".SH FILES",
              ".TP", "/etc/vtorque/vtorque.yaml", "the site configuration",
              ".TP", "/etc/vtorque/secret", "the site secret the per-job SSH keys derive from",
              ".TP", "/var/lib/vtorque/jobs/.metrics/vtorque.prom",
              "the node's metrics for node_exporter's textfile collector"]
    return "\n".join(lines) + SEE_ALSO


def vsub_page() -> str:
    from vtorque.config import schema
    from vtorque.request import KEY_HELP, VM_KEYS
    from vtorque.submit import registry
    lines = _header("vsub", "submit a batch job whose script runs inside per-job virtual "
                    "machines")
    lines += [".SH SYNOPSIS"]
    for name in ("torque", "slurm"):
        usage = registry.SUBMITTERS[name].usage.removeprefix("usage: ")
        lines += [esc(usage), ".br"]
    lines += [esc("vsub --interactive [salloc options] [-vm key=value[,key=value]]... "
                  "[-- command]"), ".br"]
    lines += ["\\fBvsub \\-\\-help\\fR", ".SH DESCRIPTION",
              "vsub passes every qsub (Torque, OpenPBS) or sbatch (Slurm) option through "
              "unchanged and adds \\fB\\-vm\\fR requests: the guests the job gets on every "
              "node it is given. Requests may be repeated and may stand in the script as "
              "\\fB#PBS \\-vm\\fR or \\fB#VSUB \\-vm\\fR lines; a key may be given once. "
              "The request is checked with the code the nodes run, so a bad one fails "
              "here with one line and nothing is submitted; the job's resources are raised "
              "to fit the guests plus the node's reserve. The script runs inside guest rank "
              "0 as you, with the job's hostfile; \\fBvtorque status\\fR shows where the "
              "job is and \\fBvtorque ssh\\fR logs into its guests. With Slurm, "
              "\\fB\\-\\-interactive\\fR allocates with salloc instead and, once every "
              "node's guests are up, runs a shell (or the command after \\fB\\-\\-\\fR) in "
              "guest rank 0 for the life of the allocation. qsub's \\fB\\-I\\fR is refused "
              "(its shell would run on the node, outside the guests): submit a batch job "
              "and log into it with \\fBvtorque ssh\\fR.",
              ".SH VM KEYS", "Defaults below are vtorque's own; a site's config may change "
              "them (\\fBvsub \\-\\-help\\fR prints this site's)."]
    defaults = schema.SCHEMA["defaults"]
    for key in VM_KEYS:
        field = defaults.get(key) if isinstance(defaults, dict) else None
        default = f" (default: {field.default})" if field is not None and \
            field.default not in (None, "") else ""
        lines += [".TP", f"\\fB{esc(key)}\\fR", esc(KEY_HELP[key] + default)]
    lines += [".SH EXAMPLES", ".nf",
              esc("vsub -vm img=debian12,vcpus=4,ram=8G job.sh"),
              esc("vsub -l nodes=2 -vm img=debian12,vms_per_node=2 mpi.sh"),
              esc("vsub -N 2 -vm distro=debian,vrdma=yes mpi.sh        (Slurm)"),
              esc("vsub --interactive -N 2 -vm img=debian12            (Slurm)"), ".fi",
              ".SH EXIT STATUS", "qsub's (sbatch's) when it ran; 1 when the request, the "
              "config or the image is refused (one line on standard error, nothing "
              "submitted); 2 a malformed option list.", ".SH ENVIRONMENT", ".TP",
              "VTORQUE_CONFIG", "the config file (default /etc/vtorque/vtorque.yaml)"]
    return "\n".join(lines) + SEE_ALSO


PAGES = {"vtorque.1": vtorque_page, "vsub.1": vsub_page}
