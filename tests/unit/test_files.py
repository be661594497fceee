"""Unit tests of vtorque.files: writers that never follow planted symlinks (faults item 19)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from vtorque.errors import NodeError
from vtorque.files import atomic_write, ensure_trusted_dir, make_dir, remove_file, remove_tree

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def test_atomic_write_creates_with_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(str(path), "hello")
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(str(path), b"\x00bytes", mode=0o640)
    assert path.read_bytes() == b"\x00bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "f"), "x")
    atomic_write(str(tmp_path / "f"), "y")
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_replaces_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "seed"
    link.symlink_to(target)
    atomic_write(str(link), "ours")
    assert not link.is_symlink()
    assert link.read_text() == "ours"
    assert target.read_text() == "precious\n"


def test_atomic_write_failure_cleans_up(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "sub").mkdir()
    with pytest.raises(OSError):
        atomic_write(str(directory / "sub"), "x")  # cannot replace a directory with a file
    assert sorted(os.listdir(directory)) == ["sub"]


def test_make_dir_creates_with_exact_mode_and_group(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        make_dir(str(tmp_path / "job"), 0o710, gid=NOBODY if os.geteuid() == 0 else None)
    finally:
        os.umask(old)
    st = os.lstat(tmp_path / "job")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o710
    assert st.st_uid == os.geteuid()
    if os.geteuid() == 0:
        assert st.st_gid == NOBODY


def test_make_dir_refuses_even_our_own_existing_directory(tmp_path: Path) -> None:
    path = tmp_path / "job"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    with pytest.raises(NodeError, match="exists already"):
        make_dir(str(path), 0o700)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o777   # not adopted, not changed


def test_make_dir_refuses_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    link = tmp_path / "job"
    link.symlink_to(target)
    with pytest.raises(NodeError, match="exists already"):
        make_dir(str(link), 0o700, gid=NOBODY)
    assert link.is_symlink()
    st = os.stat(target)
    assert stat.S_IMODE(st.st_mode) == 0o755  # not chmod-ed through the link
    assert st.st_gid != NOBODY or os.geteuid() != 0


def test_make_dir_refuses_a_planted_file(tmp_path: Path) -> None:
    (tmp_path / "job").write_text("")
    with pytest.raises(NodeError, match="exists already"):
        make_dir(str(tmp_path / "job"), 0o700)


@needs_root
def test_make_dir_refuses_another_users_directory(tmp_path: Path) -> None:
    path = tmp_path / "job"
    path.mkdir(mode=0o777)
    os.chmod(path, 0o777)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(NodeError):
        make_dir(str(path), 0o700)
    st = os.lstat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (NOBODY, 0o777)


def test_make_dir_does_not_create_parents(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="does not exist"):
        make_dir(str(tmp_path / "a" / "b"), 0o700)
    assert not (tmp_path / "a").exists()


def test_ensure_trusted_dir_makes_and_accepts_its_own(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "c"
    ensure_trusted_dir(str(path), 0o755)
    ensure_trusted_dir(str(path), 0o755)  # existing is fine
    assert path.is_dir()


def test_remove_tree_missing_path_is_fine(tmp_path: Path) -> None:
    remove_tree(str(tmp_path / "never-existed"))
    remove_tree(str(tmp_path / "never" / "existed"))


def test_remove_tree_removes_everything(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "sub").mkdir(parents=True)
    (job / "sub" / "f").write_text("x")
    (job / "g").write_text("y")
    remove_tree(str(job))
    assert not job.exists()
    assert os.listdir(tmp_path) == []


def test_remove_tree_does_not_follow_a_symlink_at_the_top(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    link = tmp_path / "job"
    link.symlink_to(outside)
    remove_tree(str(link))
    assert not os.path.lexists(link)
    assert (outside / "keep").read_text() == "precious"


def test_remove_tree_does_not_follow_symlinks_inside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    job = tmp_path / "job"
    job.mkdir()
    (job / "dirlink").symlink_to(outside)
    (job / "filelink").symlink_to(outside / "keep")
    remove_tree(str(job))
    assert not os.path.lexists(job)
    assert (outside / "keep").read_text() == "precious"


def test_remove_tree_on_a_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    remove_tree(str(path))
    assert not path.exists()


def test_remove_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    remove_file(str(path))
    assert not path.exists()
    remove_file(str(path))  # already gone is fine
