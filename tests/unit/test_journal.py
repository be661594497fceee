"""Unit tests of vtorque.journal: job ids, per-job keys and paths, the journal file
(faults items 9 and 19)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtorque.errors import JobIdError
from vtorque.journal import JobPaths, Journal, job_key

def test_job_key_refuses_bad_ids() -> None:
    with pytest.raises(JobIdError):
        job_key("../etc")


@pytest.mark.parametrize("ids", [
    ["12", "123", "1234", "12.server", "123.server"],
    ["12[1]", "12[10]", "12_1_", "12_1", "12[1", "12_10_", "12[1]0"],
    ["1.x", "1_x", "1-x", "1+x", "1@x", "1[x", "1]x"],
    ["1" + "a" * 40 + "1", "1" + "a" * 40 + "2", "1" + "a" * 41],
])
def test_job_key_is_unique_per_exact_id(ids: list[str]) -> None:
    keys = [job_key(job_id) for job_id in ids]
    assert len(set(keys)) == len(ids)
    for key in keys:
        # No key is a prefix of another: globbing "<key>*" never catches a second job.
        assert not any(other != key and other.startswith(key) for other in keys)


def test_job_key_is_stable_and_readable() -> None:
    key = job_key("12[1].server")
    assert key == job_key("12[1].server")
    assert key.startswith("12_1_.server-")
    assert len(key.rsplit("-", 1)[1]) == 10


@settings(database=None, deadline=None, max_examples=300)
@given(st.from_regex(r"[0-9][A-Za-z0-9._\[\]@+-]{0,254}", fullmatch=True).filter(
    lambda s: ".." not in s))
def test_job_key_is_file_and_domain_name_safe(job_id: str) -> None:
    key = job_key(job_id)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,40}-[0-9a-f]{10}", key)
    assert key not in (".", "..")


def test_job_paths(tmp_path: Path) -> None:
    paths = JobPaths.for_job("12[1].srv", str(tmp_path / "state"), str(tmp_path / "shm"))
    key = job_key("12[1].srv")
    assert paths.key == key
    assert paths.job_dir == str(tmp_path / "state" / key)
    assert paths.ramdisk_dir == str(tmp_path / "shm" / key)
    assert paths.journal == str(tmp_path / "state" / key / "journal.jsonl")
    assert paths.lock == str(tmp_path / "state" / ".locks" / f"{key}.lock")


def test_job_paths_of_prefix_sharing_ids_are_disjoint(tmp_path: Path) -> None:
    a = JobPaths.for_job("12", str(tmp_path), str(tmp_path / "shm"))
    b = JobPaths.for_job("123", str(tmp_path), str(tmp_path / "shm"))
    for one, other in ((a, b), (b, a)):
        assert not other.job_dir.startswith(one.job_dir)
        assert not other.ramdisk_dir.startswith(one.ramdisk_dir)
        assert not other.lock.startswith(one.lock[:-len(".lock")])


def test_job_paths_refuse_bad_ids(tmp_path: Path) -> None:
    with pytest.raises(JobIdError):
        JobPaths.for_job("../../etc", str(tmp_path), str(tmp_path))


# --- the journal file ----------------------------------------------------------------------

def test_record_and_entries(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "journal.jsonl"))
    assert journal.entries() == []
    assert journal.domain_names() == []
    journal.record("job-start", job_id="12", guests=["a", "b"])
    journal.record("guest-starting", domain="a", rank=0)
    journal.record("guest-started", domain="a", rank=0, uuid="u")
    journal.record("guest-starting", domain="b", rank=1)
    entries = journal.entries()
    assert [e["event"] for e in entries] == ["job-start", "guest-starting", "guest-started",
                                             "guest-starting"]
    assert entries[0]["guests"] == ["a", "b"]
    assert all(isinstance(e["t"], float) for e in entries)
    assert journal.domain_names() == ["a", "b"]
    assert os.stat(journal.path).st_mode & 0o777 == 0o600


def test_each_record_is_one_json_line(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "j"))
    journal.record("x", text="line\nbreak <&>")
    lines = Path(journal.path).read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["text"] == "line\nbreak <&>"


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "j"))
    journal.record("guest-starting", domain="a", rank=0)
    with open(journal.path, "ab") as handle:
        handle.write(b'{"event": "guest-starting", "domain": "b", "ra')
    assert [e.get("domain") for e in journal.entries()] == ["a"]
    assert journal.domain_names() == ["a"]


def test_garbage_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_bytes(b'[1, 2]\n"text"\n\xff\xfe\n{"domain": "a"}\n{"domain": 5}\n')
    journal = Journal(str(path))
    assert journal.entries() == [{"domain": "a"}, {"domain": 5}]
    assert journal.domain_names() == ["a"]


def test_symlink_at_journal_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "journal.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError) as info:
        Journal(str(link)).record("job-start", job_id="12")
    assert info.value.errno == errno.ELOOP
    assert target.read_text() == "precious\n"
    with pytest.raises(OSError):
        Journal(str(link)).entries()


def test_dangling_symlink_at_journal_path_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "would-be-created"
    link = tmp_path / "journal.jsonl"
    link.symlink_to(target)
    with pytest.raises(OSError):
        Journal(str(link)).record("job-start")
    assert not target.exists()
