"""Attacks on the paths the root side relies on: each test plants what a user could
(a writable config, a symlink, a hard link, a directory made first, a forged journal or
status file) and checks that root refused it with one line and made nothing."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from vtorque import config as config_mod
from vtorque import files
from vtorque.errors import ConfigError, NodeError

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the attacks chown files to another user (needs root)")


def owned_by_nobody(path: Path, mode: int | None = None) -> Path:
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    if mode is not None:
        os.chmod(path, mode)
    return path


def users_dir(path: Path, mode: int = 0o755) -> Path:
    """A directory a user owns (their home, their scratch)."""
    path.mkdir()
    return owned_by_nobody(path, mode)


def sticky_dir(path: Path) -> Path:
    """A directory like /tmp or /dev/shm: everyone may create entries."""
    path.mkdir()
    os.chmod(path, 0o1777)
    return path


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- the config file ------------------------------------------------------------------------

def _write_config(config_data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config_data))
    os.chmod(path, 0o644)
    return path


@pytest.mark.parametrize("plant", ["group-writable", "other-writable", "user-owned",
                                   "user-owned-dir", "user-symlink-in-sticky-dir"])
def test_a_config_a_user_can_change_is_refused_as_root(tmp_path: Path, config_data: dict,
                                                       plant: str) -> None:
    """The config names the commands root runs and the directories root writes: one a user
    can change hands root to that user (it made root run the user's qstat)."""
    if plant == "user-owned-dir":
        path = _write_config(config_data, users_dir(tmp_path / "etc") / "vtorque.yaml")
    elif plant == "user-symlink-in-sticky-dir":
        real = _write_config(config_data, tmp_path / "real.yaml")
        path = sticky_dir(tmp_path / "tmp") / "vtorque.yaml"
        path.symlink_to(real)
        owned_by_nobody(path)
    else:
        path = _write_config(config_data, tmp_path / "vtorque.yaml")
        if plant == "user-owned":
            owned_by_nobody(path)
        else:
            os.chmod(path, 0o664 if plant == "group-writable" else 0o646)
    with pytest.raises(ConfigError) as info:
        config_mod.load(str(path))
    message = str(info.value)
    assert "\n" not in message and "not trusted" in message
    assert not (tmp_path / "state").exists() and not (tmp_path / "log").exists()


def test_the_admins_config_loads(tmp_path: Path, config_data: dict) -> None:
    path = _write_config(config_data, tmp_path / "vtorque.yaml")
    assert config_mod.load(str(path)).state_dir == config_data["state_dir"]


def test_root_never_runs_a_batch_command_a_user_can_change(tmp_path: Path) -> None:
    from vtorque.batch.torque import Torque
    bin_dir = users_dir(tmp_path / "bin", 0o755)
    qstat = bin_dir / "qstat"
    marker = tmp_path / "ran"
    qstat.write_text(f"#!/bin/sh\ntouch {marker}\n")
    os.chmod(qstat, 0o755)
    with pytest.raises(NodeError, match="owned by uid 65534, not root"):
        Torque(str(bin_dir), use_pbs_python=False).job("1.h")
    assert not marker.exists()


def test_root_never_runs_a_qstat_a_user_can_change_to_tell_torque_from_openpbs(
        tmp_path: Path) -> None:
    from vtorque.batch import registry
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "ran"
    for name in ("qstat", "pbsnodes"):
        (bin_dir / name).write_text(f"#!/bin/sh\ntouch {marker}\n")
        os.chmod(bin_dir / name, 0o755)
    owned_by_nobody(bin_dir / "qstat")
    with pytest.raises(NodeError, match="qstat is owned by uid 65534, not root"):
        registry.detect(str(bin_dir))
    assert not marker.exists()


# --- the node's log -------------------------------------------------------------------------

@pytest.fixture
def fresh_logger():
    """node_logger configures the process-wide 'vtorque' logger: undo it after the test."""
    from vtorque import log
    logger = logging.getLogger("vtorque")
    handlers, configured = list(logger.handlers), set(log._configured)
    yield log
    for handler in logger.handlers[len(handlers):]:
        handler.close()
    logger.handlers[:] = handlers
    log._configured.clear()
    log._configured.update(configured)


def _log_config(make_config: Any, path: Path):
    return make_config({"log_file": str(path)})


def test_a_symlink_planted_at_the_log_is_not_followed(tmp_path: Path, make_config: Any,
                                                      fresh_logger) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:\n")
    logs = sticky_dir(tmp_path / "log")          # a log directory others can write
    link = logs / "vtorque.log"
    link.symlink_to(victim)
    owned_by_nobody(link)
    fresh_logger.node_logger(_log_config(make_config, link)).error("job 1: a line")
    assert victim.read_text() == "root:x:0:\n"


def test_a_symlink_at_the_log_in_roots_directory_is_not_followed(
        tmp_path: Path, make_config: Any, fresh_logger) -> None:
    victim = tmp_path / "shadow"
    victim.write_text("root:x:0:\n")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "vtorque.log").symlink_to(victim)
    fresh_logger.node_logger(_log_config(make_config, tmp_path / "log" / "vtorque.log")
                             ).error("job 1: a line")
    assert victim.read_text() == "root:x:0:\n"


def test_a_hard_link_planted_at_the_log_is_refused(tmp_path: Path, make_config: Any,
                                                   fresh_logger) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "log").mkdir()
    os.link(victim, tmp_path / "log" / "vtorque.log")
    fresh_logger.node_logger(_log_config(make_config, tmp_path / "log" / "vtorque.log")
                             ).error("job 1: a line")
    assert victim.read_text() == "precious\n"


def test_a_log_directory_a_user_owns_is_not_written(tmp_path: Path, make_config: Any,
                                                    fresh_logger) -> None:
    logs = users_dir(tmp_path / "log", 0o755)
    fresh_logger.node_logger(_log_config(make_config, logs / "vtorque.log")).error("x")
    assert tree(logs) == []


def test_the_log_is_made_by_root_and_appended(tmp_path: Path, make_config: Any,
                                              fresh_logger) -> None:
    path = tmp_path / "var" / "log" / "vtorque.log"
    logger = fresh_logger.node_logger(_log_config(make_config, path))
    logger.error("first\nForged: root logged in")
    logger.error("second")
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and "first Forged: root logged in" in lines[0]
    st = os.lstat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o640)
    assert fresh_logger.log_problem(str(path)) is None


# --- directories root makes: state, locks, ramdisk, shared state --------------------------

def test_a_ramdisk_directory_a_user_made_first_is_refused(tmp_path: Path) -> None:
    """/dev/shm is emptied at boot, so any user can create /dev/shm/vtorque first."""
    shm = sticky_dir(tmp_path / "shm")
    planted = users_dir(shm / "vtorque", 0o777)
    with pytest.raises(NodeError, match="owned by uid 65534"):
        files.ensure_trusted_dir(str(planted), 0o755)
    assert tree(planted) == []


def test_a_ramdisk_symlink_a_user_planted_is_refused(tmp_path: Path) -> None:
    shm = sticky_dir(tmp_path / "shm")
    elsewhere = tmp_path / "root-dir"
    elsewhere.mkdir()
    (shm / "vtorque").symlink_to(elsewhere)
    owned_by_nobody(shm / "vtorque")
    with pytest.raises(NodeError, match="in a directory others can write"):
        files.ensure_trusted_dir(str(shm / "vtorque" / "job-1"), 0o710)
    assert tree(elsewhere) == []


def test_a_ramdisk_directory_root_made_is_used_and_checked_again(tmp_path: Path) -> None:
    shm = sticky_dir(tmp_path / "shm")
    made = files.ensure_trusted_dir(str(shm / "vtorque"), 0o755)
    assert made == str(shm / "vtorque")
    assert files.ensure_trusted_dir(str(shm / "vtorque"), 0o755) == made
    os.chmod(made, 0o777)                       # changed later: refused on the next use
    with pytest.raises(NodeError, match="writable by group or others"):
        files.ensure_trusted_dir(made, 0o755)


def test_a_planted_lock_directory_link_is_not_followed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    users = users_dir(tmp_path / "home", 0o755)
    (state / ".locks").symlink_to(users)
    with pytest.raises(NodeError, match="owned by uid 65534"):
        files.ensure_trusted_dir(str(state / ".locks"), 0o700)
    assert tree(users) == []


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_state_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, mode)
    with pytest.raises(NodeError, match="writable by group or others"):
        files.ensure_trusted_dir(str(state), 0o755)
    if not mode & stat.S_ISVTX:             # sticky: users could not replace root's .locks
        with pytest.raises(NodeError, match="writable by group or others"):
            files.ensure_trusted_dir(str(state / ".locks"), 0o700)
    assert tree(state) == []


def test_a_job_directory_is_made_exclusively(tmp_path: Path) -> None:
    state = tmp_path / "state"
    files.ensure_trusted_dir(str(state), 0o755)
    (state / "job-1").mkdir()                   # already there: someone else's
    with pytest.raises(NodeError, match="exists already"):
        files.make_dir(str(state / "job-1"), 0o710)
    files.make_dir(str(state / "job-2"), 0o710, gid=NOBODY)
    st = os.lstat(state / "job-2")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, NOBODY, 0o710)


def test_a_job_directory_is_never_made_under_a_users_directory(tmp_path: Path) -> None:
    users = users_dir(tmp_path / "state", 0o755)
    with pytest.raises(NodeError, match="owned by uid 65534"):
        files.make_dir(str(users / "job-1"), 0o710)
    assert tree(users) == []


# --- the secret, ledgers, the checksum cache -------------------------------------------------

def test_a_secret_in_a_users_directory_is_refused(tmp_path: Path) -> None:
    from vtorque.mpi import sshkeys
    etc = users_dir(tmp_path / "etc", 0o755)
    secret = etc / "secret"
    secret.write_bytes(b"s" * 32)
    os.chmod(secret, 0o600)
    with pytest.raises(NodeError, match="site secret: .*owned by uid 65534"):
        sshkeys.read_secret(str(secret))


def test_a_ledger_a_user_planted_is_refused(tmp_path: Path) -> None:
    from vtorque.ledger import Ledger
    table = tmp_path / "addresses.json"
    table.write_text('{"1.h": [16, 17]}')
    owned_by_nobody(table)
    with pytest.raises(NodeError, match="owned by uid 65534"):
        Ledger(str(table), "address blocks").read()
    with pytest.raises(NodeError, match="owned by uid 65534"):
        with Ledger(str(table), "address blocks").change() as entries:
            entries["2.h"] = [18]
    assert table.read_text() == '{"1.h": [16, 17]}'


def test_a_checksum_cache_in_a_users_directory_is_not_used(tmp_path: Path) -> None:
    """The cache decides which pool files are not hashed again: a root-owned cache
    directory inside a user's directory can be swapped for the user's own."""
    from vtorque.images.checksums import ChecksumCache
    cache_dir = users_dir(tmp_path / "home") / "cache"
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "checksums.json").write_text('{"entries": {"/pool/x": {"id": [1], '
                                              '"sha256": "0"}}}')
    cache = ChecksumCache(str(cache_dir))
    assert not cache.usable and cache.entries == {}


# --- the shared state directory --------------------------------------------------------------

def test_a_shared_directory_others_can_write_is_refused(make_config: Any,
                                                        tmp_path: Path) -> None:
    from vtorque.cluster import handoff
    shared = sticky_dir(tmp_path / "shared")
    config = make_config({"batch": {"shared_state_dir": str(shared)}})
    with pytest.raises(NodeError, match="writable by group or others"):
        handoff.publish(config, "7.h", handoff.NodeStatus("n1", handoff.READY))
    assert tree(shared) == []
    with pytest.raises(NodeError, match="writable by group or others"):
        handoff.collect(config, "7.h", ["n1"], timeout=0.1, poll=0.01)


def test_a_forged_ready_status_is_not_believed(make_config: Any, tmp_path: Path) -> None:
    """A status file root did not write (here: a user's) never says a node is ready."""
    from vtorque.cluster import handoff
    config = make_config({"batch": {"shared_state_dir": str(tmp_path / "shared")}})
    handoff.publish(config, "7.h", handoff.NodeStatus("n1", handoff.STARTING))
    forged = Path(handoff.job_dir(config, "7.h")) / "n2.json"
    forged.write_text('{"node": "n2", "state": "ready", "job_id": "7.h"}')
    owned_by_nobody(forged)
    status = handoff.read(config, "7.h", "n2")
    assert status is not None and status.state == handoff.FAILED
    assert "owned by uid 65534" in status.reason


def test_a_hand_off_directory_a_user_made_first_is_refused(make_config: Any,
                                                           tmp_path: Path) -> None:
    from vtorque.cluster import handoff
    config = make_config({"batch": {"shared_state_dir": str(tmp_path / "shared")}})
    handoff.shared_root(config, create=True)
    planted = Path(handoff.job_dir(config, "7.h"))
    planted.mkdir()
    owned_by_nobody(planted, 0o777)
    with pytest.raises(NodeError, match="owned by uid 65534"):
        handoff.publish(config, "7.h", handoff.NodeStatus("n1", handoff.READY))
    assert tree(planted) == []


# --- the reaper: a journal is trusted only when root made it ---------------------------------

@pytest.fixture
def reaper_config(make_config: Any, tmp_path: Path):
    return make_config({"libvirt_uri": "test:///default", "node_name": "n1"})


def _plant_job_dir(config: Any, job_id: str, *, dir_owner: int = 0,
                   journal_owner: int = 0) -> Path:
    from vtorque.journal import Journal, job_key
    files.ensure_trusted_dir(config.state_dir, 0o755)
    job_dir = Path(config.state_dir) / job_key(job_id)
    job_dir.mkdir()
    Journal(str(job_dir / "journal.jsonl")).record("job-start", job_id=job_id,
                                                   guests=["vtorque-other-user-0"])
    os.chown(job_dir / "journal.jsonl", journal_owner, journal_owner)
    os.chown(job_dir, dir_owner, dir_owner)
    return job_dir


@pytest.mark.parametrize("dir_owner, journal_owner", [(NOBODY, NOBODY), (0, NOBODY),
                                                      (NOBODY, 0)])
def test_a_journal_root_did_not_make_names_no_job(reaper_config: Any, dir_owner: int,
                                                  journal_owner: int) -> None:
    """A user's directory and journal naming another user's job made root destroy that
    job's guests: such a journal now names nothing, and its directory is left alone."""
    from vtorque.admin import reaper
    job_dir = _plant_job_dir(reaper_config, "99.victim", dir_owner=dir_owner,
                             journal_owner=journal_owner)
    assert "99.victim" not in reaper.local_jobs(reaper_config)
    verdicts = reaper._empty_dirs(reaper_config, dry_run=False)
    assert [(v.job_id, v.action) for v in verdicts] == [(job_dir.name, "kept")]
    assert job_dir.exists()


def test_a_journal_in_a_directory_of_another_job_names_no_job(reaper_config: Any) -> None:
    from vtorque.admin import reaper
    from vtorque.journal import job_key
    job_dir = _plant_job_dir(reaper_config, "99.victim")
    os.rename(job_dir, Path(reaper_config.state_dir) / job_key("5.mine"))
    assert reaper.local_jobs(reaper_config) == set()


def test_a_journal_root_made_names_its_job(reaper_config: Any) -> None:
    from vtorque.admin import reaper
    _plant_job_dir(reaper_config, "5.mine")
    assert reaper.local_jobs(reaper_config) == {"5.mine"}


def test_the_reaper_refuses_a_state_directory_others_can_write(reaper_config: Any) -> None:
    from vtorque.admin import reaper
    _plant_job_dir(reaper_config, "5.mine")
    os.chmod(reaper_config.state_dir, 0o777)
    with pytest.raises(NodeError, match="writable by group or others"):
        reaper.local_jobs(reaper_config)


# --- vtorque config check --------------------------------------------------------------------

def test_config_check_reports_every_untrusted_path(tmp_path: Path, config_data: dict) -> None:
    from vtorque.config.trust import path_problems
    bin_dir = users_dir(tmp_path / "bin", 0o755)
    (tmp_path / "state").mkdir(mode=0o777)
    os.chmod(tmp_path / "state", 0o777)
    shm = sticky_dir(tmp_path / "shm-parent")
    users_dir(shm / "vtorque")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "vtorque.log").symlink_to(tmp_path / "elsewhere")
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    os.chmod(secret, 0o644)
    data = dict(config_data, ramdisk_dir=str(shm / "vtorque"), secret_file=str(secret),
                batch={**config_data["batch"], "bin_dir": str(bin_dir)})
    path = _write_config(data, tmp_path / "vtorque.yaml")
    problems = path_problems(config_mod.load(str(path)))
    keys = [p.split(":", 1)[0] for p in problems]
    assert keys == ["secret_file", "state_dir", "ramdisk_dir", "log_file",
                    "batch.bin_dir"], problems
    assert all("\n" not in p for p in problems)


def test_config_check_is_quiet_for_a_safe_install(tmp_path: Path, config_data: dict) -> None:
    from vtorque.config.trust import path_problems
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    os.chmod(secret, 0o600)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.chmod(bin_dir, 0o755)
    (bin_dir / "qstat").write_text("#!/bin/sh\n")
    os.chmod(bin_dir / "qstat", 0o755)
    data = dict(config_data, secret_file=str(secret),
                batch={**config_data["batch"], "bin_dir": str(bin_dir)})
    path = _write_config(data, tmp_path / "vtorque.yaml")
    assert path_problems(config_mod.load(str(path))) == []
