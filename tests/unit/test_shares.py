"""Unit tests of vtorque.vm.shares and the share rules of the config (batch.shares): which
host directories a job's guests mount, and where they may not."""

from __future__ import annotations

import pytest

from vtorque.config.schema import share_path_problem, shares as check_shares
from vtorque.errors import Unsupported
from vtorque.vm.shares import HOME, SITE, WORKDIR, collapse, plan_shares, without


def planned(**kwargs) -> list[tuple[str, str, bool, str]]:
    return [(s.tag, s.source, s.readonly, s.origin) for s in plan_shares(**kwargs)]


def test_workdir_home_and_site_shares_outer_first() -> None:
    """By depth, so a share is mounted before any share inside it."""
    assert planned(workdir="/scratch/u/run1", home="/home/u",
                   site=(("/opt/apps", True), ("/workspace", False))) == [
        ("vtshare0", "/workspace", False, SITE),
        ("vtshare1", "/home/u", False, HOME),
        ("vtshare2", "/opt/apps", True, SITE),
        ("vtshare3", "/scratch/u/run1", False, WORKDIR)]
    # Every share is mounted at the node's own path.
    assert all(s.source == s.target for s in plan_shares(workdir="/w/x", home="/h/u"))


def collapsed(**kwargs) -> list[tuple[str, str, bool, str]]:
    return [(s.tag, s.source, s.readonly, s.origin)
            for s in collapse(plan_shares(**kwargs))]


def test_a_share_inside_a_writable_share_is_left_out() -> None:
    assert collapsed(workdir="/home/u/project", home="/home/u") == [
        ("vtshare0", "/home/u", False, HOME)]
    # The cluster's /home as a site share shows the owner's home already.
    assert collapsed(workdir="/home/u/p", home="/home/u", site=(("/home", False),)) == [
        ("vtshare0", "/home", False, SITE)]
    # Until it is checked, every share the job asks for is there.
    assert [s.source for s in plan_shares(workdir="/home/u/p", home="/home/u")] == [
        "/home/u", "/home/u/p"]


def test_an_outer_share_the_owner_cannot_open_does_not_hide_the_inner_ones() -> None:
    """A 0711 /home (traversable, not readable) cannot be a 9p share root for the owner's
    QEMU: once it is left out, the owner's home and working directory are shared."""
    shares = plan_shares(workdir="/home/u/p", home="/home/u", site=(("/home", False),))
    assert [(s.tag, s.source) for s in collapse(without(shares, {"/home"}))] == [
        ("vtshare0", "/home/u")]
    assert [(s.tag, s.source) for s in collapse(without(shares, {"/home", "/home/u"}))] == [
        ("vtshare0", "/home/u/p")]


def test_a_writable_share_inside_a_read_only_one_is_kept() -> None:
    """Else the working directory would be read-only in the guest."""
    assert collapsed(workdir="/opt/proj/run", home=None, site=(("/opt/proj", True),)) == [
        ("vtshare0", "/opt/proj", True, SITE), ("vtshare1", "/opt/proj/run", False, WORKDIR)]


def test_the_same_directory_twice_is_shared_once() -> None:
    assert planned(workdir="/home/u", home="/home/u") == [("vtshare0", "/home/u", False,
                                                           WORKDIR)]


@pytest.mark.parametrize("workdir", ["/", "/usr/bin", "/etc", "/tmp", "/var", "/var/lib/x",
                                     "/proc/1", "/data", "/root/x", "relative/dir",
                                     "/a/../b", "/a//b", "/w/\nx", "/w/\u00e9"])
def test_a_working_directory_that_would_hide_the_guests_system_is_refused(workdir) -> None:
    with pytest.raises(Unsupported, match="working directory .* cannot be shared"):
        plan_shares(workdir=workdir, home=None)


def test_a_home_that_cannot_be_mounted_is_left_out() -> None:
    assert planned(workdir=None, home="/var/lib/postgresql") == []


def test_ordinary_odd_paths_are_fine() -> None:
    assert planned(workdir="/home/u/my run (2)", home=None)[0][1] == "/home/u/my run (2)"
    assert planned(workdir="/tmp/job.1", home=None)[0][1] == "/tmp/job.1"


def test_without_numbers_tags_afresh() -> None:
    shares = plan_shares(workdir="/w/1", home="/h/u", site=(("/s", False),))
    left = without(shares, {"/s"})
    assert [(s.tag, s.source) for s in left] == [("vtshare0", "/h/u"), ("vtshare1", "/w/1")]


def test_config_shares() -> None:
    assert check_shares([]) == () and check_shares(None) == ()
    assert check_shares(["/workspace", "/opt:ro"]) == (("/workspace", False), ("/opt", True))
    for bad, why in ((["/"], "system directory"), (["/usr/local"], "system directory"),
                     (["scratch"], "absolute"), (["/a", "/a:ro"], "listed twice"),
                     ("/scratch", "list"), ([3], "expected a path"),
                     (["/x/../y"], "normalized")):
        with pytest.raises(ValueError, match=why):
            check_shares(bad)


def test_share_path_problem_is_none_for_good_paths() -> None:
    for good in ("/home/u", "/scratch", "/opt", "/var/tmp/job", "/srv/data"):
        assert share_path_problem(good) is None, good
