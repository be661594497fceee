"""Unit tests of vsub (vtorque/submit/) against a stand-in qsub.

Each test has its own config, image pool and bin_dir in tmp_path; bin_dir/qsub is a
symlink to tests/standins/recording_qsub, which records every call in a JSON-lines file.
"A request never reached qsub" is checked by that file not existing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.vsub_site import VsubSite, add_image
from vtorque import images
from vtorque.errors import UsageError
from vtorque.submit import pbs_resources, qsub_args

STANDIN = Path(__file__).resolve().parents[1] / "standins" / "recording_qsub"
PBSE_EXIT = 15044 & 0xFF


# --- fixtures ----------------------------------------------------------------------------

class Site(VsubSite):
    """One test's site: config file, pool, bin_dir with the stand-in, calls file."""

    def calls(self) -> list[dict]:
        """Recorded qsub calls; the `-S <job shell>` vsub adds to every VM job is taken out
        of argv into call["job_shell"] so the other tests compare the user's options."""
        if not self.calls_file.exists():
            return []
        out = []
        for line in self.calls_file.read_text().splitlines():
            call = json.loads(line)
            argv = call["argv"]
            if "-S" in argv:
                at = len(argv) - 1 - argv[::-1].index("-S")
                call["job_shell"] = argv[at + 1]
                call["argv"] = argv[:at] + argv[at + 2:]
            out.append(call)
        return out


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Site:
    pool = tmp_path / "pool"
    pool.mkdir()
    add_image(pool)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qsub").symlink_to(STANDIN)
    s = Site(tmp=tmp_path, pool=pool, bin=bin_dir, config=tmp_path / "vtorque.yaml",
             calls_file=tmp_path / "calls.jsonl", monkeypatch=monkeypatch, capsys=capsys)
    s.write_config()
    monkeypatch.setenv("VTORQUE_CONFIG", str(s.config))
    monkeypatch.setenv("VTORQUE_STANDIN_CALLS", str(s.calls_file))
    monkeypatch.delenv("VTORQUE_STANDIN_QSUB_FAIL", raising=False)
    monkeypatch.delenv("VTORQUE_VM", raising=False)
    monkeypatch.delenv("PBS_DPREFIX", raising=False)
    monkeypatch.chdir(tmp_path)

    def no_hashing(path: str) -> str:
        raise AssertionError(f"vsub must not hash images ({path})")
    monkeypatch.setattr(images.catalog, "sha256_file", no_hashing)
    return s


JOB = "#!/bin/sh\necho hello\n"
# Defaults: vcpus 1, ram 1G, vms_per_node 1, host_reserve 1 core + 1G -> 2 cores and
# 1G + 70M for QEMU + 1G = 2118 MiB.
DEFAULT_L = ["-l", "nodes=1:ppn=2,mem=2118mb"]


def vm_var(text: str) -> list[str]:
    return ["-v", f"VTORQUE_VM={text}"]


# --- pass-through and -vm ------------------------------------------------------------------

def test_unknown_options_pass_through_in_order(site: Site) -> None:
    job = site.script(JOB)
    r = site.run("-N", "name", "-q", "batch", "-l", "walltime=01:00:00", "-m", "abe",
                 "-vm", "img=testguest", "-j", "oe", "-hz", "-Wdepend=afterok:1", "-A",
                 "proj", job)
    assert (r.code, r.err) == (0, "")
    [call] = site.calls()
    assert call["argv"] == ["-N", "name", "-q", "batch", "-l", "walltime=01:00:00", "-m",
                            "abe", "-j", "oe", "-hz", "-Wdepend=afterok:1", "-A", "proj",
                            *DEFAULT_L, *vm_var("img=testguest"), job]
    assert call["stdin"] == ""
    assert call["env_VTORQUE_VM"] is False


def test_vm_is_matched_as_a_whole_word_not_as_dash_v_m(site: Site) -> None:
    job = site.script(JOB)
    r = site.run("-v", "m", "-vm", "img=testguest,vcpus=2", "-vm", "ram=2G", job)
    assert r.code == 0
    [call] = site.calls()
    # The user's -v gets our variable appended (OpenPBS keeps only the last -v).
    assert call["argv"] == ["-v", "m,VTORQUE_VM=img=testguest;vcpus=2;ram=2G",
                            "-l", "nodes=1:ppn=3,mem=3148mb", job]


def test_options_after_the_script_are_read_and_the_script_goes_last(site: Site) -> None:
    job = site.script(JOB)
    assert site.run("-vm", "img=testguest", job, "-N", "late").code == 0
    assert site.calls()[0]["argv"] == ["-N", "late", *DEFAULT_L,
                                       *vm_var("img=testguest"), job]


def test_version_goes_straight_to_qsub(site: Site) -> None:
    r = site.run("--version")
    assert r.code == 0
    assert site.calls()[0]["argv"] == ["--version"]


# --- #PBS directives -----------------------------------------------------------------------

SCRIPT_WITH_DIRECTIVES = """\
#!/bin/bash
# a comment

#PBS -vm img=testguest,vcpus=2
   #PBS -N named -vm vms_per_node=2
#PBS -l walltime=00:10:00
echo start
#PBS -vm ram=4G
"""


def test_only_the_leading_directive_block_counts(site: Site) -> None:
    job = site.script(SCRIPT_WITH_DIRECTIVES)
    r = site.run(job)
    assert r.code == 0, r.err
    [call] = site.calls()
    # vcpus 2 x 2 guests + 1 = 5 cores; (1G + 74M for QEMU) x 2 + 1G = 3220 MiB; the late
    # ram=4G is ignored.
    assert call["argv"][:-1] == ["-l", "nodes=1:ppn=5,mem=3220mb",
                                 *vm_var("img=testguest;vcpus=2;vms_per_node=2")]
    # qsub gets a copy with the same file name whose -vm directives are neutralized.
    copy = call["argv"][-1]
    assert copy != job and os.path.basename(copy) == "job.sh"
    assert not os.path.exists(copy), "the private copy is removed after qsub ran"
    assert call["script_text"] == """\
#!/bin/bash
# a comment

# vsub: #PBS -vm img=testguest,vcpus=2
   #PBS -N named
#PBS -l walltime=00:10:00
echo start
#PBS -vm ram=4G
"""


def test_script_without_vm_directives_is_passed_as_given(site: Site) -> None:
    job = site.script("#!/bin/sh\n#PBS -N plain\necho hi\n")
    assert site.run("-vm", "img=testguest", job).code == 0
    assert site.calls()[0]["argv"][-1] == job


def test_command_line_and_script_requests_merge(site: Site) -> None:
    job = site.script("#PBS -vm vcpus=3\necho hi\n")
    assert site.run("-vm", "img=testguest", job).code == 0
    assert site.calls()[0]["argv"][-3:-1] == vm_var("img=testguest;vcpus=3")


def test_key_given_on_command_line_and_in_script_is_refused(site: Site) -> None:
    job = site.script("#PBS -vm vcpus=3\necho hi\n")
    r = site.run("-vm", "img=testguest,vcpus=2", job)
    assert r.code == 1
    assert r.err == "vsub: -vm key 'vcpus' given more than once\n"
    assert not site.calls_file.exists()


def test_script_from_stdin(site: Site) -> None:
    text = "#PBS -vm img=testguest\n#PBS -N fromstdin\necho hi\n"
    r = site.run("-q", "short", stdin=text)
    assert (r.code, r.out) == (0, "1.standin\n")
    [call] = site.calls()
    assert call["argv"] == ["-q", "short", *DEFAULT_L, *vm_var("img=testguest")]
    assert call["stdin"] == "# vsub: #PBS -vm img=testguest\n#PBS -N fromstdin\necho hi\n"


def test_stdin_script_without_vm_directives_is_sent_unchanged(site: Site) -> None:
    assert site.run("-vm", "img=testguest", stdin=JOB).code == 0
    assert site.calls()[0]["stdin"] == JOB


def test_directive_prefix_from_dash_C_and_from_PBS_DPREFIX(site: Site) -> None:
    text = "#VT -vm img=testguest,vcpus=2\n#PBS -vm vcpus=7\necho hi\n"
    job = site.script(text)
    assert site.run("-C", "#VT", job).code == 0
    assert site.calls()[-1]["argv"][:4] == ["-C", "#VT", "-l", "nodes=1:ppn=3,mem=2122mb"]
    site.monkeypatch.setenv("PBS_DPREFIX", "#VT")
    assert site.run(job).code == 0
    assert vm_var("img=testguest;vcpus=2")[1] in site.calls()[-1]["argv"]


def test_empty_prefix_turns_directives_off(site: Site) -> None:
    job = site.script("#PBS -vm vcpus=9\necho hi\n")
    assert site.run("-C", "", "-vm", "img=testguest", job).code == 0
    assert site.calls()[0]["argv"][-1] == job


# --- bad requests never reach qsub (faults 13-15) ------------------------------------------

@pytest.mark.parametrize("request_text, expected", [
    ("img=testguest,colour=red", "unknown -vm key 'colour'"),
    ("img=testguest,vpcus=2", "did you mean 'vcpus'"),
    ("img=testguest,img=testguest", "'img' given more than once"),
    ("img=testguest,vcpus=", "'vcpus' has an empty value"),
    ("img=testguest,vcpus=2=3", "value of 'vcpus' must not contain '='"),
    ("img=testguest,ram=-1G", "value of 'ram' must not start with '-'"),
    ("img=testguest,vcpus=0", "vcpus=0 is below the minimum 1"),
    ("img=testguest,vcpus=abc", "vcpus='abc' is not a whole number"),
    ("img=testguest,vcpus=65", "vcpus=65 exceeds the site limit 64 (limits.vcpus)"),
    ("img=testguest,vms_per_node=9", "exceeds the site limit 8 (limits.vms_per_node)"),
    ("img=testguest,ram=0", "ram=0 is below the minimum 64M"),
    ("img=testguest,ram=1T", "ram=1T exceeds the site limit 256G (limits.ram)"),
    ("img=../x", "img='../x' is not a catalog name"),
    ("img=/var/lib/vtorque/images/x.qcow2", "is not a catalog name"),
    ("img=http://evil.example/x.qcow2", "is not a catalog name"),
    ("img=nope", "image 'nope' is not in the authorized image pool (available: testguest)"),
    ("vcpus=2", "names no image"),
    ("", "empty -vm request"),
])
def test_bad_request_is_one_line_and_nothing_is_submitted(site: Site, request_text: str,
                                                          expected: str) -> None:
    r = site.run("-N", "x", "-vm", request_text, site.script(JOB))
    assert r.code == 1
    assert r.err.startswith("vsub: ") and r.err.count("\n") == 1, r.err
    assert expected in r.err
    assert r.out == ""
    assert not site.calls_file.exists()


def test_comma_inside_a_value_is_refused_naming_the_item(site: Site) -> None:
    r = site.run("-vm", "img=testguest,vcpus=2,4", site.script(JOB))
    assert (r.code, r.err) == (1, "vsub: malformed -vm item '4' (expected key=value; values "
                                  "cannot contain ',')\n")
    assert not site.calls_file.exists()


def test_bad_request_in_a_directive_is_refused(site: Site) -> None:
    r = site.run(site.script("#PBS -vm img=testguest,vcpus=-1\necho\n"))
    assert (r.code, r.err) == (1, "vsub: -vm value of 'vcpus' must not start with '-'\n")
    assert not site.calls_file.exists()


def test_image_symlink_out_of_the_pool_is_refused(site: Site, tmp_path: Path) -> None:
    outside = tmp_path / "outside.vmlinuz"
    outside.write_bytes(b"x")
    (site.pool / "linked.vmlinuz").symlink_to(outside)
    sha = hashlib.sha256(b"x").hexdigest()
    (site.pool / "linked.yaml").write_text(
        "name: linked\nkind: kernel\ndistro: debian\narch: x86_64\n"
        f"kernel: {{file: linked.vmlinuz, sha256: '{sha}'}}\n")
    r = site.run("-vm", "img=linked", site.script(JOB))
    assert r.code == 1 and "is a symlink" in r.err
    assert not site.calls_file.exists()


def test_distro_picks_the_catalog_image_and_only_user_keys_travel(site: Site) -> None:
    add_image(site.pool, "ubu", distro="ubuntu")
    assert site.run("-vm", "distro=ubuntu", site.script(JOB)).code == 0
    assert vm_var("distro=ubuntu")[1] in site.calls()[0]["argv"]
    r = site.run("-vm", "img=testguest,distro=ubuntu", site.script(JOB))
    assert r.code == 1 and "is distro 'debian'" in r.err


def test_no_vm_keys_uses_the_site_default_image_and_names_it(site: Site) -> None:
    site.write_config(defaults={"img": "testguest"})
    assert site.run(site.script(JOB)).code == 0
    assert site.calls()[0]["argv"][-3:-1] == vm_var("img=testguest")


def test_user_supplied_job_variable_is_refused(site: Site) -> None:
    r = site.run("-v", "A=1,VTORQUE_VM=img=evil", "-vm", "img=testguest", site.script(JOB))
    assert r.code == 1 and "VTORQUE_VM is set by vsub" in r.err
    r = site.run(site.script("#PBS -v VTORQUE_VM\n#PBS -vm img=testguest\necho\n"))
    assert r.code == 1 and "VTORQUE_VM" in r.err
    assert not site.calls_file.exists()


def test_job_variable_in_the_environment_never_reaches_qsub(site: Site) -> None:
    site.monkeypatch.setenv("VTORQUE_VM", "img=evil")
    assert site.run("-V", "-vm", "img=testguest", site.script(JOB)).code == 0
    assert site.calls()[0]["env_VTORQUE_VM"] is False


def test_script_v_directives_are_carried_into_the_added_v(site: Site) -> None:
    job = site.script("#PBS -v FOO=1,BAR\n#PBS -vm img=testguest\necho\n")
    site.monkeypatch.setenv("BAR", "2")
    assert site.run(job).code == 0
    assert site.calls()[0]["argv"][-3:-1] == ["-v", "FOO=1,BAR,VTORQUE_VM=img=testguest"]


# --- config and qsub problems --------------------------------------------------------------

def test_missing_config_is_one_line(site: Site) -> None:
    site.config.unlink()
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert (r.code, r.err) == (1, f"vsub: config {site.config}: file not found\n")
    assert not site.calls_file.exists()


def test_broken_config_is_one_line(site: Site) -> None:
    site.config.write_text("limits: {vcpus: many}\nbogus: 1\n")
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert r.code == 1 and r.err.count("\n") == 1
    assert r.err.startswith(f"vsub: config {site.config}: ")
    assert not site.calls_file.exists()


def test_qsub_missing_from_bin_dir_is_one_line(site: Site) -> None:
    (site.bin / "qsub").unlink()
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert (r.code, r.err) == (1, f"vsub: {site.bin}/qsub not found or not executable "
                                  f"(config key batch.bin_dir in {site.config})\n")


def test_unreadable_script_is_one_line(site: Site) -> None:
    r = site.run("-vm", "img=testguest", "missing.sh")
    assert (r.code, r.err) == (1, "vsub: cannot read the job script missing.sh: No such "
                                  "file or directory\n")


@pytest.mark.parametrize("argv, expected", [
    (["-Y", "job.sh"], "unknown qsub option -Y"),
    (["-l"], "option -l needs an argument"),
    (["-vm"], "-vm needs key=value"),
    (["--frobnicate", "job.sh"], "unknown option --frobnicate"),
    (["a.sh", "b.sh"], "unexpected argument 'b.sh' after the script 'a.sh'"),
])
def test_malformed_option_lists_exit_2(site: Site, argv: list[str], expected: str) -> None:
    r = site.run(*argv)
    assert r.code == 2 and r.err.count("\n") == 1 and expected in r.err
    assert not site.calls_file.exists()


def test_double_dash_command_is_refused(site: Site) -> None:
    r = site.run("-vm", "img=testguest", "--", "/bin/hostname")
    assert r.code == 1 and "'--'" in r.err
    assert not site.calls_file.exists()


# --- interactive ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, script", [
    (["-I"], JOB),
    (["-hIX"], JOB),
    (["-W", "interactive=true"], JOB),
    ([], "#PBS -I\n#PBS -vm img=testguest\necho\n"),
])
def test_interactive_is_refused(site: Site, argv: list[str], script: str) -> None:
    r = site.run(*argv, "-vm", "img=testguest", site.script(script))
    assert r.code == 1 and r.err.count("\n") == 1
    assert "interactive VM jobs (-I) are not supported with qsub" in r.err
    assert "log into it with `vtorque ssh JOB`" in r.err
    assert not site.calls_file.exists()


# --- resources -----------------------------------------------------------------------------

# vcpus=4, vms_per_node=2, ram=2G, host_reserve 1 core + 1G: 9 cores and (2G + 84M for
# QEMU) x 2 + 1G = 5288 MiB per node.
BIG = "img=testguest,vcpus=4,vms_per_node=2,ram=2G"


@pytest.mark.parametrize("user_args, directives, expected_args, note", [
    # no nodes: one node with enough cores, memory for it
    ([], "", ["-l", "nodes=1:ppn=9,mem=5288mb"], None),
    # enough ppn kept; memory for both nodes added
    (["-l", "nodes=2:ppn=16"], "", ["-l", "nodes=2:ppn=16", "-l", "mem=10576mb"], None),
    # ppn raised in place, properties and other resources kept
    (["-l", "nodes=2:ppn=4:gpu,walltime=01:00:00"], "",
     ["-l", "nodes=2:ppn=9:gpu,walltime=01:00:00", "-l", "mem=10576mb"],
     "ppn 4 -> 9"),
    # no ppn given: added
    (["-lnodes=2"], "", ["-lnodes=2:ppn=9", "-l", "mem=10576mb"], None),
    # host names and counts add up to three nodes
    (["-l", "nodes=n01:ppn=2+2:ppn=12"], "",
     ["-l", "nodes=n01:ppn=9+2:ppn=12", "-l", "mem=15864mb"], "ppn 2 -> 9"),
    # enough memory kept as given; too little raised in place
    (["-l", "mem=64gb,nodes=1:ppn=9"], "", ["-l", "mem=64gb,nodes=1:ppn=9"], None),
    (["-l", "nodes=1:ppn=9,mem=1gb"], "", ["-l", "nodes=1:ppn=9,mem=5288mb"], "mem 1gb"),
    # the script's nodes spec is overridden by an added command-line -l
    ([], "#PBS -l nodes=3:ppn=1\n", ["-l", "nodes=3:ppn=9,mem=15864mb"], "ppn 1 -> 9"),
    # command line overrides the script per resource, as qsub does
    (["-l", "nodes=2:ppn=10"], "#PBS -l nodes=3:ppn=1\n",
     ["-l", "nodes=2:ppn=10", "-l", "mem=10576mb"], None),
    # OpenPBS select: per-chunk ncpus and mem, no job-wide mem
    (["-l", "select=2:ncpus=4:mem=1gb"], "", ["-l", "select=2:ncpus=9:mem=5288mb"],
     "ncpus 4 -> 9"),
    (["-l", "select=1:ngpus=1,place=scatter"], "",
     ["-l", "select=1:ngpus=1:ncpus=9:mem=5288mb,place=scatter"], None),
])
def test_resource_adjustment(site: Site, user_args: list[str], directives: str,
                             expected_args: list[str], note: str | None) -> None:
    job = site.script(directives + "echo hi\n")
    r = site.run(*user_args, "-vm", BIG, job)
    assert r.code == 0, r.err
    argv = site.calls()[0]["argv"]
    assert argv[:-3] == expected_args
    assert argv[-3:] == [*vm_var("img=testguest;vcpus=4;ram=2G;vms_per_node=2"), job]
    if note:
        assert r.err.startswith("vsub: note: raised ") and note in r.err
        assert r.err.count("\n") == 1
    else:
        assert r.err == ""
    assert r.out == "1.standin\n"


def test_unreadable_mem_is_refused(site: Site) -> None:
    r = site.run("-l", "mem=lots", "-vm", "img=testguest", site.script(JOB))
    assert r.code == 2 and "cannot read the size 'lots'" in r.err
    assert not site.calls_file.exists()


def test_host_reserve_comes_from_the_config(site: Site) -> None:
    site.write_config(host_reserve={"cores": 3, "memory": "512M"})
    assert site.run("-vm", "img=testguest", site.script(JOB)).code == 0
    assert site.calls()[0]["argv"][:2] == ["-l", "nodes=1:ppn=4,mem=1606mb"]


# --- qsub's output and exit status ---------------------------------------------------------

def test_qsub_output_and_status_pass_through(site: Site) -> None:
    job = site.script(JOB)
    first = site.run("-vm", "img=testguest", job)
    second = site.run("-vm", "img=testguest", job)
    assert (first.code, first.out, first.err) == (0, "1.standin\n", "")
    assert (second.code, second.out, second.err) == (0, "2.standin\n", "")


def test_qsub_failure_passes_through_exactly(site: Site) -> None:
    site.monkeypatch.setenv("VTORQUE_STANDIN_QSUB_FAIL", "Bad UID for job execution")
    r = site.run("-vm", "img=testguest", site.script(JOB))
    assert (r.code, r.out, r.err) == (
        PBSE_EXIT, "", "qsub: submit error (Bad UID for job execution)\n")
    assert len(site.calls()) == 1


# --- help ----------------------------------------------------------------------------------

def test_help_lists_keys_with_site_defaults_and_limits(site: Site) -> None:
    site.write_config(defaults={"vcpus": 2, "ram": "2G"}, limits={"vcpus": 16})
    r = site.run("--help")
    assert r.code == 0 and r.err == ""
    assert r.out.startswith("usage: vsub [qsub options]")
    assert f"site defaults and limits from {site.config}" in r.out
    for key in ("img", "distro", "vcpus", "ram", "vms_per_node", "vcpu_pinning", "disk",
                "vrdma", "fs_type"):
        assert f"\n  {key} " in r.out
    assert "default: 2; at most 16" in r.out
    assert "default: 2G; from 64M to 256G" in r.out
    assert "images: testguest" in r.out
    assert not site.calls_file.exists()


def test_help_without_a_config_still_lists_the_keys(site: Site) -> None:
    site.config.unlink()
    r = site.run("--help")
    assert r.code == 0
    assert "site values are unavailable" in r.out
    assert "\n  vcpus " in r.out and "default:" not in r.out


def test_dash_h_is_qsubs_hold_not_help(site: Site) -> None:
    assert site.run("-h", "-vm", "img=testguest", site.script(JOB)).code == 0
    assert site.calls()[0]["argv"][0] == "-h"


# --- the installed command, as a user runs it ------------------------------------------------

def _vsub_process(site: Site, *argv: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, VTORQUE_CONFIG=str(site.config),
               VTORQUE_STANDIN_CALLS=str(site.calls_file))
    return subprocess.run([sys.executable, "-m", "vtorque.submit.vsub", *argv], input=stdin,
                          capture_output=True, text=True, env=env, cwd=site.tmp, timeout=60)


def test_command_submits_from_stdin_and_never_prints_a_traceback(site: Site) -> None:
    done = _vsub_process(site, "-vm", "img=testguest", stdin=JOB)
    assert (done.returncode, done.stdout, done.stderr) == (0, "1.standin\n", "")
    assert site.calls()[0]["stdin"] == JOB
    bad = _vsub_process(site, "-vm", "img=testguest,vcpus=abc", stdin=JOB)
    assert (bad.returncode, bad.stdout) == (1, "")
    assert bad.stderr == "vsub: -vm vcpus='abc' is not a whole number\n"
    assert len(site.calls()) == 1


def test_command_imports_neither_libvirt_nor_the_vm_layer(site: Site) -> None:
    code = ("import sys; from vtorque.submit import vsub; rc = vsub.main(['-vm', 'img=testguest', "
            f"{site.script(JOB)!r}]); "
            "print(sorted(m for m in sys.modules if m.startswith(('libvirt', 'vtorque.vm'))))")
    env = dict(os.environ, VTORQUE_CONFIG=str(site.config),
               VTORQUE_STANDIN_CALLS=str(site.calls_file))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert done.stdout == "1.standin\n[]\n", done.stderr


# --- qsub_options, pure ------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["-N", "x", "-hz", "-lnodes=2", "-hNname", "-W", "a=b", "-V", "script"],
    ["-F", "-a -b", "-t", "1-10%2", "-P", "user:group", "-x", "-n"],
])
def test_parse_and_render_round_trip(argv: list[str]) -> None:
    parsed = qsub_args.parse_args(argv)
    rendered = [w for g in parsed.groups for w in g.render()]
    expected = [w for w in argv if w != parsed.script]
    assert rendered == expected


def test_dash_v_variable_named_m_is_not_a_vm_request() -> None:
    parsed = qsub_args.parse_args(["-v", "m", "-vm", "img=a", "-Vvm"])
    assert parsed.vm_texts == ("img=a",)
    assert parsed.args_of("v") == ["m", "m"]


@pytest.mark.parametrize("text, size", [
    ("100", 100), ("4kb", 4096), ("512mb", 512 << 20), ("4GB", 4 << 30), ("1tb", 1 << 40),
    ("2mw", 16 << 20), ("7b", 7),
])
def test_parse_pbs_size(text: str, size: int) -> None:
    assert pbs_resources.parse_pbs_size(text) == size


@pytest.mark.parametrize("text", ["", "4g", "x", "1.5gb", "-1mb"])
def test_parse_pbs_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        pbs_resources.parse_pbs_size(text)


def test_directive_block_ends_at_the_first_command() -> None:
    text = "#!/bin/sh\n\n: colon\n#PBS -vm vcpus=1\n  \n# c\n#PBSX -vm y\nrun\n#PBS -vm z=1\n"
    found = qsub_args.read_directives(text, "#PBS")
    assert [d.line for d in found.directives] == [4]
    assert found.vm_texts == ["vcpus=1"]
    assert found.text_for_qsub == text.replace("#PBS -vm vcpus=1", "# vsub: #PBS -vm vcpus=1")


def test_split_list_keeps_quoted_and_bracketed_commas() -> None:
    assert qsub_args.split_list("a=1,b='x,y',c=[1,2],d") == ["a=1", "b='x,y'", "c=[1,2]", "d"]


def test_directive_lines_are_split_on_newlines_only() -> None:
    text = "#PBS -N a\x0cb\r\n#PBS -vm vcpus=2\r\nrun\n"
    found = qsub_args.read_directives(text, "#PBS")
    assert [d.line for d in found.directives] == [1, 2]
    assert found.text_for_qsub == "#PBS -N a\x0cb\r\n# vsub: #PBS -vm vcpus=2\r\nrun\n"


def test_vm_jobs_get_the_job_shell_and_keep_the_users_shell(site: Site) -> None:
    script = site.script("#!/bin/sh\n#PBS -S /bin/bash\necho hi\n")
    result = site.run("-vm", "img=testguest", script)
    assert result.code == 0, result.err
    [call] = site.calls()
    assert call["job_shell"] == "/usr/local/libexec/vtorque/job-shell"
    assert "VTORQUE_SHELL=/bin/bash" in ",".join(call["argv"])
