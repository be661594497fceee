"""Unit tests of `vtorque ssh` and `vtorque console` (vtorque/admin/login.py): only the
job's owner, only with the job's own files, ssh exec'd with the job's ssh_config; the
console log printed without the guest's control sequences."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.operator_site import write_config
from vtorque.admin import cli, jobinfo, login
from vtorque.cluster import handoff
from vtorque.journal import JobPaths


@pytest.fixture
def cfg_file(tmp_path: Path, config_data: dict):
    return write_config(tmp_path / "vtorque.yaml", config_data, {"node_name": "n1"})


def user_dir(config, job: str = "42", uid: int = 0, kind: str = "linux") -> Path:
    paths = JobPaths.for_job(job, config.state_dir, config.ramdisk_dir)
    directory = Path(paths.user_dir)
    directory.mkdir(parents=True, mode=0o700)
    (directory / "hostfile").write_text(f"vt{job}-0 slots=1\nvt{job}-1 slots=1\n")
    (directory / "ssh_config").write_text("Host *\n")
    (directory / "guest-kind").write_text(kind + "\n")
    os.chown(directory, uid, uid)
    return directory


def run(config, capsys: Any, *args: str) -> tuple[int, str, str]:
    code = cli.main(["--config", config.path, *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_ssh_execs_ssh_with_the_jobs_config_for_its_owner(cfg_file, capsys: Any,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    directory = user_dir(cfg_file)
    calls = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env))
                        or (_ for _ in ()).throw(SystemExit(0)))
    with pytest.raises(SystemExit):
        cli.main(["--config", cfg_file.path, "ssh", "42", "1", "--", "hostname", "-f"])
    [(path, argv, env)] = calls
    assert path == "/usr/bin/ssh"
    assert argv == ["/usr/bin/ssh", "-F", str(directory / "ssh_config"), "-T", "vt42-1",
                    "hostname", "-f"]
    assert set(env) <= {"PATH", "HOME", "LANG", "TERM"}


def test_anyone_but_the_owner_is_refused(cfg_file, capsys: Any) -> None:
    user_dir(cfg_file, uid=4242)
    code, _, err = run(cfg_file, capsys, "ssh", "42")
    assert code == 1 and err == "vtorque: job 42 belongs to another user; only its owner " \
                                "may log into its guests\n"


def test_ranks_osv_and_absent_jobs_are_one_line(cfg_file, capsys: Any) -> None:
    user_dir(cfg_file)
    code, _, err = run(cfg_file, capsys, "ssh", "42", "2")
    assert code == 1 and err == "vtorque: job 42 has guest ranks 0 to 1, not 2\n"
    user_dir(cfg_file, "43", kind="osv")
    assert "OSv guests" in run(cfg_file, capsys, "ssh", "43")[2]
    code, _, err = run(cfg_file, capsys, "ssh", "44")
    assert code == 1 and err.startswith("vtorque: job 44 has no running guests on this node")


def test_a_job_whose_rank_0_runs_elsewhere_says_where(cfg_file, capsys: Any) -> None:
    handoff.publish(cfg_file, "45", handoff.NodeStatus(
        "n2", handoff.READY, guests=[{"rank": 0, "name": "d", "hostname": "vt45-0"}]))
    code, _, err = run(cfg_file, capsys, "ssh", "45")
    assert err == "vtorque: job 45: guest rank 0 runs on node n2; run vtorque ssh there\n"


def test_console_prints_the_log_without_control_sequences(cfg_file, capsys: Any) -> None:
    paths = JobPaths.for_job("42", cfg_file.state_dir, cfg_file.ramdisk_dir)
    Path(paths.job_dir).mkdir(parents=True, mode=0o710)
    log = Path(paths.job_dir) / f"vtorque-{paths.key}-1.console.log"
    log.write_bytes(b"\x1b[2J\x1bcBooting\r\nvtorque-ready ab12\x07\n\x1b]0;title\x07done\n")
    code, out, _ = run(cfg_file, capsys, "console", "42", "1")
    assert code == 0 and out == "Booting\nvtorque-ready ab12\ndone\n"
    code, _, err = run(cfg_file, capsys, "console", "42", "0")
    assert code == 1 and "has no running guests on this node" in err


def test_console_for_users_only_their_own(cfg_file, capsys: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    user_dir(cfg_file, uid=65534)   # nobody: a user every machine has
    monkeypatch.setattr(os, "geteuid", lambda: 1002)
    monkeypatch.setattr(jobinfo, "me", lambda: "nobody-else")
    code, _, err = run(cfg_file, capsys, "console", "42")
    assert code == 1 and "only its owner may read its console" in err


@pytest.mark.parametrize(("rest", "expected"), [
    ([], (0, [])), (["3"], (3, [])), (["--", "ls"], (0, ["ls"])),
    (["1", "--", "ls", "-l"], (1, ["ls", "-l"])), (["uptime"], (0, ["uptime"])),
])
def test_split_rank(rest: list[str], expected: tuple) -> None:
    assert login.split_rank(rest) == expected


def test_guest_names_in_rank_order() -> None:
    assert login.guest_names("vt1-0 slots=2\n\nvt1-1 slots=2\nbogus line\n") == \
        ["vt1-0", "vt1-1"]
