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
