"""vsub with Slurm (vtorque/vsub.py, the Slurm section of vtorque/qsub_options.py) against the
stand-in sbatch (tests/standins/slurm/sbatch), which records every submission in its DB.
"A request never reached sbatch" is checked by the DB having no submission and no call.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.standins import calls, install, read_db
from tests.unit.vsub_site import VsubSite, add_image
from vtorque import images
from vtorque.errors import UsageError
from vtorque.submit import sbatch_args, sbatch_resources, slurm_submit
from vtorque.submit.submission import footprint
from vtorque.batch.slurm import parse_show_job

JOB = "#!/bin/sh\n#SBATCH --time=10\necho hello\n"
# Defaults: vcpus 1, ram 1G, vms_per_node 1, host_reserve 1 core + 1G -> 2 CPUs and
# 1G + 70M for QEMU + 1G = 2118 MiB.
ADDED = ["--mincpus=2", "--mem=2118M"]


class Site(VsubSite):
    def batch_config(self) -> dict:
        return {"bin_dir": str(self.bin), "job_shell": self.job_shell}

    def submitted(self) -> list[dict]:
        return read_db(self.db).get("submitted", [])

    def one(self) -> dict:
        (sub,) = self.submitted()
        return sub

    def options(self) -> list[str]:
        """sbatch's argv without the script file."""
        argv = self.one()["argv"]
        return argv[:-1] if argv and os.path.isabs(argv[-1]) else argv


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Site:
    pool = tmp_path / "pool"
    pool.mkdir()
    add_image(pool)
    bin_dir = tmp_path / "bin"
    db = install("slurm", bin_dir, jobs={})
    s = Site(tmp=tmp_path, pool=pool, bin=bin_dir, db=db, config=tmp_path / "vtorque.yaml",
             job_shell="/usr/local/libexec/vtorque/job-shell", monkeypatch=monkeypatch,
             capsys=capsys)
    s.write_config()
    monkeypatch.setenv("VTORQUE_CONFIG", str(s.config))
    for name in list(os.environ):
        if name.startswith("SBATCH_") or name == "VTORQUE_VM":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def no_hashing(path: str) -> str:
        raise AssertionError(f"vsub must not hash images ({path})")
    monkeypatch.setattr(images.catalog, "sha256_file", no_hashing)
    return s


def nothing_submitted(site: Site) -> bool:
    return site.submitted() == [] and calls(site.db) == []


# --- options and the request -----------------------------------------------------------------

def test_sbatch_options_pass_through_in_order_and_vsub_adds_its_own_after(site: Site) -> None:
    job = site.script(JOB)
    r = site.run("-J", "name", "--partition=batch", "-N", "2", "--exclusive", "-vm",
                 "img=testguest", "-HQ", "--mail-type", "END", job)
    assert r.code == 0, r.err
    assert site.options() == ["-J", "name", "--partition=batch", "-N", "2", "--exclusive",
                              "-HQ", "--mail-type", "END", "--comment=vtorque:img=testguest",
                              *ADDED]
    assert os.path.basename(site.one()["argv"][-1]) == "job.sh"    # sbatch names the job
    assert r.out == "Submitted batch job 100\n" and r.err == ""


def test_vm_forms_and_vsub_directives_merge(site: Site) -> None:
    job = site.script("#!/bin/bash\n#SBATCH -N 2\n#VSUB -vm vcpus=2\n#VSUB --vm=ram=512M\n"
                      "\n# a comment\nsrun hostname\n#VSUB -vm disk=1G\n")
    r = site.run("--vm", "img=testguest", "-vm", "vms_per_node=1", job)
    assert r.code == 0, r.err
    comment = [a for a in site.options() if a.startswith("--comment=")]
    assert comment == ["--comment=vtorque:img=testguest;vcpus=2;ram=512M;vms_per_node=1"]
    # 2 vCPUs + 1 reserved core; 512M + 1G reserve.
    assert site.options()[-2:] == ["--mincpus=3", "--mem=1609M"]


def test_key_given_twice_is_refused_before_sbatch(site: Site) -> None:
    job = site.script("#!/bin/sh\n#VSUB -vm vcpus=2\ntrue\n")
    r = site.run("-vm", "vcpus=1", job)
    assert (r.code, r.err) == (1, "vsub: -vm key 'vcpus' given more than once\n")
    assert nothing_submitted(site)


@pytest.mark.parametrize("request_text", ["vcpus=100000", "img=../../etc/passwd",
                                          "bogus=1", "img=nosuchimage", "ram=1 G"])
def test_bad_request_never_reaches_sbatch(site: Site, request_text: str) -> None:
    r = site.run("-vm", request_text, site.script(JOB))
    assert r.code == 1 and r.err.startswith("vsub: ") and r.err.count("\n") == 1
    assert nothing_submitted(site)


@pytest.mark.parametrize("line, message", [
    ("#SBATCH -vm img=testguest", "put VM requests in '#VSUB -vm ...' lines"),
    ("#VSUB -N 2", "#VSUB lines take -vm requests only"),
    ("#PBS -l nodes=2", "write it as #SBATCH"),
    ("#SBATCH --bogus-option", None),
])
def test_directive_problems(site: Site, line: str, message: str | None) -> None:
    r = site.run("-vm", "img=testguest", site.script(f"#!/bin/sh\n{line}\ntrue\n"))
    if message is None:                       # unknown option in a directive: sbatch judges
        assert r.code == 0, r.err
        return
    assert r.code == 2 and message in r.err and "script line 2" in r.err
    assert nothing_submitted(site)


def test_pbs_directives_pass_with_ignore_pbs(site: Site) -> None:
    r = site.run("--ignore-pbs", "-vm", "img=testguest",
                 site.script("#!/bin/sh\n#PBS -l nodes=2\ntrue\n"))
    assert r.code == 0, r.err


def test_users_comment_is_kept_after_the_request(site: Site) -> None:
    job = site.script("#!/bin/sh\n#SBATCH --comment=\"from the script\"\ntrue\n")
    assert site.run("-vm", "img=testguest", job).code == 0
    assert "--comment=vtorque:img=testguest from the script" in site.options()
    assert site.run("--comm=cli words", "-vm", "img=testguest", job).code == 0
    last = site.submitted()[-1]["argv"]
    assert last[0] == "--comm=cli words"                          # passed as given, first
    assert "--comment=vtorque:img=testguest cli words" in last     # ours wins (last)


@pytest.mark.parametrize("comment, code", [("vtorque:img=evil", 1), ("two\nlines", 2)])
def test_comments_vsub_cannot_carry_are_refused(site: Site, comment: str, code: int) -> None:
    r = site.run("--comment", comment, "-vm", "img=testguest", site.script(JOB))
    assert r.code == code and "comment" in r.err
    assert nothing_submitted(site)


def test_the_job_record_carries_the_request_to_the_root_side(site: Site) -> None:
    """vsub -> stand-in sbatch -> the job in the stand-in's DB -> stand-in scontrol ->
    vtorque.batch.slurm: the root side reads exactly the user's keys."""
    assert site.run("-vm", "img=testguest,vcpus=2", "--comment=mine",
                    site.script(JOB)).code == 0
    out = subprocess.run([str(site.bin / "scontrol"), "show", "job", "100"],
                         capture_output=True, text=True, timeout=30).stdout
    ctx = parse_show_job(out, "100").ctx
    assert ctx.vm_request == "img=testguest;vcpus=2" and ctx.job_name == "job.sh"


# --- resources ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, directives, env, added, note", [
    ([], "", {}, ADDED, None),
    (["--mincpus=1", "--mem=1G"], "", {}, ADDED, "raised --mincpus 1 -> 2, --mem 1G -> 2118M"),
    (["--mincpus", "8", "--mem=4G"], "", {}, [], None),
    ([], "#SBATCH --mincpus=1\n#SBATCH --mem=100\n", {}, ADDED,
     "raised --mincpus 1 -> 2, --mem 100 -> 2118M"),
    ([], "#SBATCH --mem=8G\n", {}, ["--mincpus=2"], None),
    (["--mem=100"], "#SBATCH --mem=8G\n", {}, ADDED, "--mem 100 -> 2118M"),
    ([], "", {"SBATCH_MEM_PER_NODE": "512"}, ADDED, "--mem 512 -> 2118M"),
    ([], "#SBATCH --mem=100\n", {"SBATCH_MEM_PER_NODE": "4G"}, ["--mincpus=2"], None),
    (["--mem=0"], "", {}, ["--mincpus=2"], None),
    (["--mem-per-cpu=100"], "", {}, ["--mincpus=2", "--mem-per-cpu=1059M"],
     "--mem-per-cpu 100 -> 1059M"),
    (["--mem-per-cpu=2G"], "", {}, ["--mincpus=2"], None),
    (["--mem-per-gpu=1G"], "", {}, ["--mincpus=2"], "--mem-per-gpu (command line) is kept"),
    (["--mem-per-c=10"], "", {}, ["--mincpus=2", "--mem-per-cpu=1059M"], "-> 1059M"),
])
def test_resources_are_raised_to_fit_the_guests(site: Site, args: list[str], directives: str,
                                                env: dict[str, str], added: list[str],
                                                note: str | None) -> None:
    for name, value in env.items():
        site.monkeypatch.setenv(name, value)
    r = site.run(*args, "-vm", "img=testguest",
                 site.script(f"#!/bin/sh\n{directives}true\n"))
    assert r.code == 0, r.err
    assert site.options() == [*args, "--comment=vtorque:img=testguest", *added]
    if note is None:
        assert r.err == ""
    else:
        assert r.err.startswith("vsub: note: ") and note in r.err


def test_host_reserve_and_request_size_the_footprint(site: Site) -> None:
    site.write_config(host_reserve={"cores": 3, "memory": "512M"})
    assert site.run("-vm", "img=testguest,vcpus=2,vms_per_node=2,ram=1G",
                    site.script(JOB)).code == 0
    assert site.options()[-2:] == ["--mincpus=7", "--mem=2708M"]


def test_unreadable_sizes_are_usage_errors(site: Site) -> None:
    r = site.run("--mem=lots", "-vm", "img=testguest", site.script(JOB))
    assert r.code == 2 and "cannot read --mem=lots" in r.err
    assert nothing_submitted(site)


# --- the wrapper script ------------------------------------------------------------------

NASTY = ("#!/bin/bash\n#SBATCH -J nasty\n#VSUB -vm vcpus=1\n\necho \"$HOME\" `id` $(date)"
         " '\\n' \\\nVTORQUE_SCRIPT_EOF\ncat <<'EOF'\nEOF\n  VTORQUE_SCRIPT_EOF\n"
         "#SBATCH --late\nprintf '%s\\r\\n' done")


def test_wrapper_keeps_directives_for_sbatch_and_the_script_verbatim(site: Site) -> None:
    job = site.script(NASTY)
    assert site.run("-vm", "img=testguest", job).code == 0
    wrapper = site.one()["script"]
    head, _, rest = wrapper.partition(f"exec {site.job_shell} /dev/stdin <<'")
    assert head.startswith("#!/bin/sh\n#SBATCH -J nasty\n#VSUB -vm vcpus=1\n\n")
    assert "echo" not in head and "#!/bin/bash" not in head
    delimiter, _, body = rest.partition("'\n")
    assert delimiter == "VTORQUE_SCRIPT_EOF_1"            # the script holds the plain one
    assert body == NASTY + "\n" + delimiter + "\n"


def test_wrapper_feeds_the_job_shell_exactly_the_script(site: Site, tmp_path: Path) -> None:
    """Run the submitted wrapper with sh and a job shell that copies what it reads."""
    shell = tmp_path / "job-shell"
    copy = tmp_path / "seen"
    shell.write_text(f"#!/bin/sh\ncat \"$1\" > {copy}\necho \"args: $*\"\n")
    shell.chmod(0o755)
    site.job_shell = str(shell)
    site.write_config()
    text = NASTY + "\n" + "x" * 100_000 + "\n"            # larger than a pipe buffer
    assert site.run("-vm", "img=testguest", site.script(text)).code == 0
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(site.one()["script"])
    done = subprocess.run(["/bin/sh", str(wrapper)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "args: /dev/stdin\n"
    assert copy.read_text() == text


def test_script_from_stdin_is_wrapped_on_stdin(site: Site) -> None:
    r = site.run("-vm", "img=testguest", stdin=JOB)
    assert r.code == 0, r.err
    sub = site.one()
    assert sub["stdin"].startswith("#!/bin/sh\n#SBATCH --time=10\n")
    assert sub["stdin"].endswith(f"{JOB}VTORQUE_SCRIPT_EOF\n")
    assert sub["argv"] == ["--comment=vtorque:img=testguest", *ADDED]


def test_wrap_becomes_the_script_sbatch_would_have_made(site: Site) -> None:
    r = site.run("--wrap=hostname; id", "-N1", "-vm", "img=testguest")
    assert r.code == 0, r.err
    sub = site.one()
    assert os.path.basename(sub["argv"][-1]) == "wrap"
    assert not any(a.startswith("--wrap") for a in sub["argv"])
    assert sub["script"].endswith(
        "\n#!/bin/sh\n# This script was created by sbatch --wrap.\n\nhostname; id\n"
        "VTORQUE_SCRIPT_EOF\n")
    r = site.run("--wrap", "true", "-vm", "img=testguest", site.script(JOB))
    assert r.code == 2 and "--wrap and a script" in r.err


@pytest.mark.parametrize("text, message", [
    ("echo no interpreter line\n", "does not start with #!"),
    ("", "the job script is empty"),
    ("#!/bin/sh\necho \x00\n", "NUL"),
])
def test_scripts_sbatch_would_refuse_are_refused(site: Site, text: str, message: str) -> None:
    r = site.run("-vm", "img=testguest", site.script(text))
    assert r.code == 2 and message in r.err
    assert nothing_submitted(site)


# --- what vsub refuses or hands over ---------------------------------------------------------

@pytest.mark.parametrize("argv, code, message", [
    (["-vm", "img=testguest", "job.sh", "arg1"], 1, "script arguments"),
    (["-N1", ":", "-N1", "job.sh"], 1, "heterogeneous jobs"),
    (["--bogus", "job.sh"], 2, "unknown sbatch option --bogus"),
    (["-X", "job.sh"], 2, "unknown sbatch option -X"),
    (["--no", "job.sh"], 2, "ambiguous"),
    (["--hold=yes", "job.sh"], 2, "--hold takes no argument"),
    (["-vm"], 2, "-vm needs an argument"),
    (["--time"], 2, "--time needs an argument"),
])
def test_malformed_command_lines(site: Site, argv: list[str], code: int, message: str) -> None:
    site.script(JOB)
    r = site.run(*argv)
    assert r.code == code and message in r.err
    assert nothing_submitted(site)


def test_unknown_long_option_with_a_value_passes(site: Site) -> None:
    r = site.run("--tres-per-task=gres:gpu:1", "-vm", "img=testguest", site.script(JOB))
    assert r.code == 0, r.err
    assert site.options()[0] == "--tres-per-task=gres:gpu:1"


def test_double_dash_ends_the_options(site: Site) -> None:
    job = site.script(JOB, name="-odd.sh")
    assert site.run("-vm", "img=testguest", "--", job).code == 0


def test_sbatch_output_and_status_pass_through(site: Site) -> None:
    assert site.run("--parsable", "-vm", "img=testguest", site.script(JOB)).out == "100\n"
    install("slurm", site.bin, fail={"sbatch": {
        "exit": 1, "stderr": "sbatch: error: invalid partition specified: abcd\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"}})
    r = site.run("-p", "abcd", "-vm", "img=testguest", site.script(JOB))
    assert (r.code, r.out) == (1, "")
    assert r.err == ("sbatch: error: invalid partition specified: abcd\n"
                     "sbatch: error: Batch job submission failed: Invalid partition name "
                     "specified\n")


def test_version_and_usage_go_straight_to_sbatch(site: Site) -> None:
    r = site.run("--version")
    assert (r.code, r.out) == (0, "slurm-wlm 22.05.8\n")
    assert calls(site.db)[-1]["argv"] == ["sbatch", "--version"]
    assert site.run("--usage").code == 0
    assert calls(site.db)[-1]["argv"] == ["sbatch", "--usage"]


@pytest.mark.parametrize("flag", ["--help", "-h", "--he"])
def test_help_describes_the_slurm_form(site: Site, flag: str) -> None:
    r = site.run(flag)
    assert r.code == 0 and r.out.startswith("usage: vsub [sbatch options]")
    assert "#VSUB -vm key=value" in r.out and "\n  vcpus " in r.out
    assert nothing_submitted(site)


def test_auto_detection_prefers_slurm_over_slurm_torque_wrappers(site: Site) -> None:
    (site.bin / "qsub").write_text("#!/bin/sh\necho qsub wrapper\n")
    (site.bin / "qsub").chmod(0o755)
    assert site.run("-vm", "img=testguest", site.script(JOB)).code == 0
    assert len(site.submitted()) == 1
    os.unlink(site.bin / "scontrol")                    # no Slurm pair: the qsub family
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert r.out == "qsub wrapper\n"


def test_explicit_system_slurm_and_missing_sbatch(site: Site) -> None:
    site.write_config(batch={"system": "slurm"})
    os.unlink(site.bin / "sbatch")
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert r.code == 1 and "sbatch not found or not executable" in r.err


def test_missing_config_is_one_line(site: Site) -> None:
    site.config.unlink()
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert (r.code, r.err) == (1, f"vsub: config {site.config}: file not found\n")


# --- the pure functions ---------------------------------------------------------------------

def test_parse_sbatch_args_reads_getopt_forms() -> None:
    parsed = sbatch_args.parse_sbatch_args(["-HvN2", "-kfoo", "-k", "--nice", "--nice=5", "-c", "4",
                                   "--cpus-per-t=2", "--export", "NONE", "-vm", "vcpus=1",
                                   "script.sh"])
    assert [o.names for o in parsed.options] == [
        ("hold", "verbose", "nodes"), ("no-kill",), ("no-kill",), ("nice",), ("nice",),
        ("cpus-per-task",), ("cpus-per-task",), ("export",)]
    assert parsed.values("nodes") == ["2"] and parsed.values("cpus-per-task") == ["4", "2"]
    assert parsed.values("no-kill") == ["foo"] and parsed.values("nice") == ["5"]
    assert (parsed.vm_texts, parsed.script) == (("vcpus=1",), "script.sh")
    assert parsed.words() == ["-HvN2", "-kfoo", "-k", "--nice", "--nice=5", "-c", "4",
                              "--cpus-per-t=2", "--export", "NONE"]


def test_sbatch_table_knows_22_05s_abbreviations() -> None:
    assert sbatch_args._resolve_long("comm", "") == "comment"
    assert sbatch_args._resolve_long("extra", "") == "extra-node-info"    # 22.05: no --extra
    assert sbatch_args._resolve_long("mem", "") == "mem"
    with pytest.raises(UsageError, match="ambiguous"):
        sbatch_args._resolve_long("mem-per", "")


@pytest.mark.parametrize("text, mib", [("4096", 4096), ("4G", 4096), ("4gb", 4096),
                                       ("512M", 512), ("1024K", 1), ("1k", 1), ("1T", 1 << 20),
                                       ("0", 0)])
def test_parse_slurm_size(text: str, mib: int) -> None:
    assert sbatch_resources.parse_slurm_size_mib(text, "mem") == mib


@pytest.mark.parametrize("text", ["1.5G", "-5", "10x", "", "G"])
def test_parse_slurm_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        sbatch_resources.parse_slurm_size_mib(text, "mem")


def test_wait_means_no_timeout_for_sbatch() -> None:
    script = sbatch_args.read_sbatch_script("job.sh", JOB)
    need = footprint(1, 1024, 1, 1, 1024)
    for argv, env in ((["-W"], {}), (["--wait"], {}), ([], {"SBATCH_WAIT": "1"})):
        parsed = sbatch_args.parse_sbatch_args([*argv, "job.sh"], environ=env)
        sub = slurm_submit.build_sbatch_submission(parsed, script, "img=x", need, "/js")
        assert sub.wait
    parsed = sbatch_args.parse_sbatch_args(["job.sh"], environ={"HOME": "/x"})
    assert not slurm_submit.build_sbatch_submission(parsed, script, "img=x", need, "/js").wait
    assert parsed.environ == {}


def test_leading_block_ends_where_sbatch_stops_reading() -> None:
    text = ("#!/bin/sh\n  #SBATCH --comment=indented\n#SBATCH-t 5\n\n# c\n#SBATCH --mem=1G"
            " # note\necho\n#SBATCH --mem=9G\n")
    script = sbatch_args.read_sbatch_script("j", text)
    assert script.block_end == 6
    assert [(line, o.names, o.value) for line, o in script.options()] == [
        (3, ("time",), "5"), (6, ("mem",), "1G")]


# --- interactive sessions: salloc, then vtorque ssh into guest rank 0 ----------------------

def interactive(site: Site, monkeypatch: pytest.MonkeyPatch, *argv: str):
    """vsub --interactive ARGV: the argv it would exec salloc with, or (when it refuses)
    the run's code, out and err."""
    for name in ("salloc", "srun"):
        path = site.bin / name
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
    execs: list[list[str]] = []

    def fake_exec(path: str, args: list[str]) -> None:
        execs.append(args)
        raise SystemExit(0)
    monkeypatch.setattr(os, "execv", fake_exec)
    monkeypatch.setattr(os, "isatty", lambda fd: False)
    try:
        return site.run("--interactive", *argv)
    except SystemExit:
        return execs[0]


def test_an_interactive_session_allocates_with_the_request_and_logs_into_rank0(
        site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = interactive(site, monkeypatch, "-N", "2", "-vm", "img=testguest,vcpus=1", "--",
                       "hostname", "-f")
    assert argv[0] == str(site.bin / "salloc")
    at = argv.index("/bin/sh")
    assert argv[1:at] == ["-N", "2", "--comment=vtorque:img=testguest;vcpus=1", *ADDED]
    session, name, srun, python, *rest = argv[at + 2:]
    assert (name, srun) == ("vsub-session", str(site.bin / "srun"))
    assert rest == ["--", "hostname", "-f"]
    # The session: a step on the first node running vtorque ssh for this job.
    done = subprocess.run(["/bin/sh", "-c", session.replace('exec "$srun"', 'echo "$srun"'),
                           name, srun, python, *rest], capture_output=True, text=True,
                          env={"SLURM_JOB_ID": "77", "PATH": "/usr/bin:/bin"})
    assert done.stdout.split() == [srun, "--overlap", "--nodes=1", "--ntasks=1", python,
                                   "-m", "vtorque", "ssh", "77", "--", "hostname", "-f"]
    assert nothing_submitted(site)


@pytest.mark.parametrize("argv, message", [
    (["-vm", "img=testguest", "job.sh"], "takes no job script"),
    (["-vm", "img=testguest", "--comment=vtorque:img=x"], "may not start with 'vtorque:'"),
    (["-vm", "img=testguest,vcpus=9999"], "vcpus"),
])
def test_an_interactive_session_refuses_what_a_batch_job_would(
        site: Site, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str) -> None:
    site.script(JOB)
    done = interactive(site, monkeypatch, *argv)
    assert done.code != 0 and message in done.err, done
    assert done.err.count("\n") == 1                  # one line
    assert nothing_submitted(site)
