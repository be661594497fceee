"""The man pages are generated from the commands' own parsers (vtorque/admin/manpage.py,
scripts/build-man); the committed pages must be what the generator makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from vtorque.admin import manpage
from vtorque.admin.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_are_up_to_date() -> None:
    for name, make in manpage.PAGES.items():
        assert (ROOT / "man" / name).read_text() == make(), \
            f"man/{name} is out of date: run scripts/build-man"


def test_build_man_check_fails_on_a_stale_page(tmp_path: Path) -> None:
    (tmp_path / "vtorque.1").write_text("stale\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build-man"), "--check",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "out of date" in done.stderr


def test_every_command_and_option_is_in_the_vtorque_page() -> None:
    page = manpage.vtorque_page()
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name in sub.choices:
        assert manpage.esc(f"vtorque {name}") in page
    for option in ("\\-\\-json", "\\-\\-hooks", "\\-\\-force", "\\-\\-convert", "\\-\\-follow"):
        assert option in page
    assert page.startswith(".TH VTORQUE 1")


def test_the_vsub_page_lists_every_vm_key() -> None:
    from vtorque.request import VM_KEYS
    page = manpage.vsub_page()
    for key in VM_KEYS:
        assert f"\\fB{manpage.esc(key)}\\fR" in page
    assert "(default: sharedfs)" in page


def test_roff_escapes() -> None:
    assert manpage.esc(".hidden -x \\") == "\\&.hidden \\-x \\e"
