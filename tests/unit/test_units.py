"""Unit tests of vtorque.units: sizes and booleans as vTorque users and admins write them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtorque.units import FALSE_WORDS, TRUE_WORDS, format_mib, parse_bool, parse_size_mib

QUICK = settings(database=None, deadline=None, max_examples=200)


@pytest.mark.parametrize("text, mib", [
    ("512M", 512),
    ("512m", 512),
    ("512MB", 512),
    ("512MiB", 512),
    ("2G", 2048),
    ("2g", 2048),
    ("2GiB", 2048),
    ("1T", 1 << 20),
    ("1TB", 1 << 20),
    ("1048576K", 1024),
    ("1024KiB", 1),
    ("4", 4),              # a bare number is MiB
    ("0", 0),
    ("0G", 0),
    (" 4G ", 4096),        # surrounding blanks are ignored
])
def test_parse_size_mib_accepts(text: str, mib: int) -> None:
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text, reason", [
    ("", "expected a size"),
    ("G", "expected a size"),
    ("-1G", "expected a size"),
    ("1.5G", "expected a size"),
    ("4X", "expected a size"),
    ("4 G", "expected a size"),
    ("4P", "expected a size"),
    ("512B", "expected a size"),     # bytes, not MiB: refused, never read as 512 MiB
    ("512iB", "expected a size"),
    ("1e3", "expected a size"),
    ("0x10", "expected a size"),
    ("1k", "whole number of MiB"),
    ("1536K", "whole number of MiB"),
])
def test_parse_size_mib_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_size_mib(text)


@pytest.mark.parametrize("mib, text", [
    (0, "0M"), (1, "1M"), (512, "512M"), (1024, "1G"), (1536, "1536M"), (3072, "3G"),
    (1 << 20, "1T"), ((1 << 20) + 1024, "1025G"), (5 << 20, "5T"),
])
def test_format_mib_is_shortest_exact(mib: int, text: str) -> None:
    assert format_mib(mib) == text


@pytest.mark.parametrize("word", sorted(TRUE_WORDS) + ["YES", "Enabled", " on "])
def test_parse_bool_true(word: str) -> None:
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", sorted(FALSE_WORDS) + ["NO", "Disabled", " off "])
def test_parse_bool_false(word: str) -> None:
    assert parse_bool(word) is False


@pytest.mark.parametrize("word", ["", "y", "n", "2", "maybe", "yess", "enable"])
def test_parse_bool_refuses(word: str) -> None:
    with pytest.raises(ValueError, match="expected yes or no"):
        parse_bool(word)


def test_vtorque_words_are_known() -> None:
    # vTorque's own spelling of booleans in -vm requests.
    assert {"enabled", "disabled", "yes", "no", "true", "false"} <= TRUE_WORDS | FALSE_WORDS
    assert not TRUE_WORDS & FALSE_WORDS


@QUICK
@given(st.integers(min_value=0, max_value=1 << 40))
def test_format_then_parse_round_trips(mib: int) -> None:
    assert parse_size_mib(format_mib(mib)) == mib


@QUICK
@given(st.integers(min_value=0, max_value=1 << 30),
       st.sampled_from(["", "M", "m", "MB", "MiB", "G", "g", "GiB", "T", "TB"]))
def test_parse_then_format_round_trips(number: int, unit: str) -> None:
    mib = parse_size_mib(f"{number}{unit}")
    text = format_mib(mib)
    assert parse_size_mib(text) == mib
    # format_mib picks the largest unit that is exact, so its text is never longer.
    assert len(text) <= len(f"{number}{unit.upper()[:1] or 'M'}")


@QUICK
@given(st.integers(min_value=0, max_value=1 << 30))
def test_kib_multiples_of_1024_round_trip(mib: int) -> None:
    assert format_mib(parse_size_mib(f"{mib * 1024}K")) == format_mib(mib)
