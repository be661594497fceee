"""The job shell's pure parts (remote command, environment, OSv command) and the OSv
readiness probe against the OSv REST API stand-in."""

from __future__ import annotations

import subprocess

import pytest

from tests.standins.osv_server import OsvStandin
from vtorque import jobshell
from vtorque.jobshell import ssh
from vtorque.errors import VtorqueError
from vtorque.vm import readiness


def test_script_shell_follows_the_shebang():
    assert ssh.script_shell("#!/bin/bash -l\necho\n") == ("/bin/bash", ["-l"])
    assert ssh.script_shell("echo hi\n") == ("/bin/sh", [])
    # A shebang that is not a plain path falls back to /bin/sh.
    assert ssh.script_shell("#!$(evil)\n") == ("/bin/sh", [])


def test_guest_environment_translates_and_filters():
    env = {"PBS_JOBID": "1.s", "PBS_NODEFILE": "/var/spool/torque/aux/1.s",
           "PBS_O_WORKDIR": "/home/u", "PBS_O_PATH": "/evil", "LD_PRELOAD": "x.so",
           "HOME": "/home/u"}
    out = ssh.guest_environment(env, "1.s")
    assert out["PBS_NODEFILE"] == "/etc/vtorque/nodefile"
    assert out["OMPI_MCA_orte_default_hostfile"] == "/etc/vtorque/hostfile"
    assert out["PBS_O_WORKDIR"] == "/home/u"
    assert "LD_PRELOAD" not in out and "PBS_O_PATH" not in out and "HOME" not in out


def test_remote_command_quotes_every_value(tmp_path):
    # Run the command the guest would run, with a local sh: the hostile value arrives
    # intact, nothing in it runs, and the script comes from stdin in the workdir.
    hostile = "a'; touch pwned #$(touch pwned2)`touch pwned3`"
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    command = ssh.remote_command({"PBS_JOBNAME": hostile}, str(workdir), "/bin/sh", [])
    done = subprocess.run(["/bin/sh", "-c", command], input='printf %s "$PBS_JOBNAME"; pwd',
                          capture_output=True, text=True, cwd=tmp_path, timeout=10)
    assert done.stdout == hostile + str(workdir) + "\n"
    assert not any(p.name.startswith("pwned") for p in tmp_path.rglob("*"))


def test_osv_command_is_the_single_command_line():
    script = "#!/bin/sh\n#PBS -N x\n\n/usr/bin/app.so --n 4\n"
    assert jobshell.osv_command(script) == "/usr/bin/app.so --n 4"
    with pytest.raises(VtorqueError, match="exactly one command line"):
        jobshell.osv_command("/a.so\n/b.so\n")


def test_osv_guest_is_ready_when_its_api_answers(tmp_path):
    with OsvStandin(str(tmp_path / "guest")) as guest:
        url = f"http://{guest.address}:{guest.port}/os/version"
        assert readiness.api_answers(url)
    assert not readiness.api_answers(url, timeout=0.5)   # stopped: refused


# --- vm_prologue and vm_epilogue ------------------------------------------------------

from vtorque.jobshell import vmscripts  # noqa: E402


def user_dir_with(tmp_path, prologue: str = "", epilogue: str = "", guests: int = 2):
    directory = tmp_path / "user"
    directory.mkdir()
    (directory / "vm-prologue").write_text(prologue + ("\n" if prologue else ""))
    (directory / "vm-epilogue").write_text(epilogue + ("\n" if epilogue else ""))
    (directory / "guests").write_text("".join(f"vt7-{r} 10.0.0.{10 + r}\n"
                                              for r in range(guests)))
    return str(directory)


class Recorder:
    """The job's steps as the job shell takes them; statuses per (what, guest)."""

    def __init__(self, script_status: int = 0, **statuses: int):
        self.calls: list[tuple] = []
        self.script_status = script_status
        self.statuses = statuses

    def script(self) -> int:
        self.calls.append(("script",))
        return self.script_status

    def run_in(self, guest, what, path, job_status) -> int:
        self.calls.append((what, guest.hostname, path, job_status))
        return self.statuses.get(f"{what}_{guest.hostname.replace('-', '_')}", 0)


def test_no_scripts_runs_only_the_job(tmp_path):
    rec = Recorder(script_status=3)
    assert vmscripts.around(rec.script, rec.run_in, user_dir_with(tmp_path)) == 3
    assert rec.calls == [("script",)]


def test_prologue_everywhere_then_the_job_then_the_epilogue_everywhere(tmp_path, capsys):
    rec = Recorder(script_status=0)
    user = user_dir_with(tmp_path, "/opt/pre.sh", "/opt/post.sh")
    assert vmscripts.around(rec.script, rec.run_in, user) == 0
    assert sorted(rec.calls[:2]) == [("prologue", "vt7-0", "/opt/pre.sh", 0),
                                     ("prologue", "vt7-1", "/opt/pre.sh", 0)]
    assert rec.calls[2] == ("script",)
    assert sorted(rec.calls[3:]) == [("epilogue", "vt7-0", "/opt/post.sh", 0),
                                     ("epilogue", "vt7-1", "/opt/post.sh", 0)]
    assert capsys.readouterr().err == ""


def test_a_failing_prologue_fails_the_job_without_running_it(tmp_path, capsys):
    rec = Recorder(prologue_vt7_1=4)
    user = user_dir_with(tmp_path, "/opt/pre.sh", "/opt/post.sh")
    assert vmscripts.around(rec.script, rec.run_in, user) == 4
    assert ("script",) not in rec.calls
    assert not any(c[0] == "epilogue" for c in rec.calls)
    err = capsys.readouterr().err
    assert err == ("vtorque: vm_prologue /opt/pre.sh failed on guest vt7-1: it exited with "
                   "status 4: the job script was not run\n")


def test_an_unreachable_guest_fails_the_prologue_with_255(tmp_path, capsys):
    rec = Recorder(prologue_vt7_0=255)
    assert vmscripts.around(rec.script, rec.run_in,
                            user_dir_with(tmp_path, "/opt/pre.sh")) == 255
    assert "could not be run there" in capsys.readouterr().err


def test_the_epilogue_sees_the_jobs_status_and_a_failure_fails_a_good_job(tmp_path, capsys):
    rec = Recorder(script_status=0, epilogue_vt7_0=6)
    user = user_dir_with(tmp_path, "", "/opt/post.sh")
    assert vmscripts.around(rec.script, rec.run_in, user) == 6
    assert "vm_epilogue /opt/post.sh failed on guest vt7-0: it exited with status 6" in \
        capsys.readouterr().err
    bad = Recorder(script_status=2, epilogue_vt7_0=6)
    assert vmscripts.around(bad.script, bad.run_in, user) == 2      # the job's own wins
    assert {c[3] for c in bad.calls if c[0] == "epilogue"} == {2}


def test_the_guests_file_lists_every_guest(tmp_path):
    user = user_dir_with(tmp_path, guests=3)
    assert [(g.hostname, g.address) for g in vmscripts.guests(user)] == [
        ("vt7-0", "10.0.0.10"), ("vt7-1", "10.0.0.11"), ("vt7-2", "10.0.0.12")]
    assert vmscripts.scripts(user) == (None, None)


def test_script_command_runs_a_program_or_a_shell_script(tmp_path):
    """As the guest runs it: in the working directory, with the job's environment, an
    executable as itself and any other file with /bin/sh; values stay words."""
    work = tmp_path / "w d"
    work.mkdir()
    program = tmp_path / "pre"
    program.write_text('#!/bin/sh\necho "prog $PWD $VTORQUE_VM_SCRIPT $X"\nexit 3\n')
    program.chmod(0o755)
    plain = tmp_path / "plain.sh"
    plain.write_text('echo "plain $X"\n')
    hostile = "$(touch pwned); `touch pwned2`"
    for path, out, status in ((program, f"prog {work} prologue {hostile}\n", 3),
                              (plain, f"plain {hostile}\n", 0)):
        line = vmscripts.script_command(str(path), {"VTORQUE_VM_SCRIPT": "prologue",
                                                    "X": hostile}, str(work))
        done = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True,
                              cwd=tmp_path, timeout=10)
        assert (done.stdout, done.returncode) == (out, status)
    missing = vmscripts.script_command(str(tmp_path / "none"), {}, None)
    assert subprocess.run(["/bin/sh", "-c", missing], capture_output=True,
                          timeout=10).returncode != 0
    assert not list(tmp_path.rglob("pwned*"))


def test_ssh_runs_the_scripts_in_every_guest(tmp_path, monkeypatch):
    """The Linux job shell: one ssh per guest for each script, then the job in rank 0."""
    from vtorque import proc
    user = user_dir_with(tmp_path, "/opt/pre.sh", "/opt/post.sh")
    seen = []

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return proc.Completed(list(argv), 0, "", "")
    monkeypatch.setattr(ssh.proc, "run", fake_run)
    status = ssh.run("#!/bin/sh\ntrue\n", {"PBS_JOBID": "7.h", "PBS_O_WORKDIR": "/w"},
                     "7.h", user, "vt7-0")
    assert status == 0
    hosts = [argv[argv.index("-T") + 1] for argv in seen]
    assert hosts[0] == "vt7-0"                               # the login probe
    assert sorted(hosts[1:3]) == ["vt7-0", "vt7-1"]          # vm_prologue everywhere
    assert hosts[3] == "vt7-0"                               # the job in rank 0
    assert sorted(hosts[4:]) == ["vt7-0", "vt7-1"]           # vm_epilogue everywhere
    assert "VTORQUE_VM_SCRIPT=prologue" in seen[1][-1] and "/opt/pre.sh" in seen[1][-1]
    assert "VTORQUE_JOB_EXIT_STATUS=0" in seen[4][-1]
