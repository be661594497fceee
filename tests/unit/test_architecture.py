"""The architecture of docs/design.md, checked: the layer contracts (import-linter, in
pyproject.toml), one module per concern and none too big to read, and no comment that
sends a reader outside the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "vtorque"
MAX_LINES = 400


def test_the_import_contracts_hold() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-logo",
                           "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BROKEN" not in done.stdout
    assert done.stdout.count("KEPT") >= 3, done.stdout


def test_a_forbidden_import_breaks_the_contract(tmp_path: Path) -> None:
    """The checker itself can fail: a copy of the package where vm/ imports the hooks."""
    import shutil
    copy = tmp_path / "tree"
    shutil.copytree(PACKAGE, copy / "vtorque", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    spec = copy / "vtorque" / "vm" / "spec.py"
    spec.write_text(spec.read_text() + "\nfrom vtorque.hooks import base  # noqa\n")
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-logo",
                           "--no-cache"], cwd=copy, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0
    assert "vtorque.vm is not allowed to import vtorque.hooks" in done.stdout


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT))
                                          for p in PACKAGE.rglob("*.py")))
def test_no_module_is_too_big_to_read(module: str) -> None:
    lines = (ROOT / module).read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by concern"


_OUTSIDE = re.compile(r"/work/|\.\./shared|shared/reference|\bissue\s*#?\d+|\bissues?\s+\d+",
                      re.IGNORECASE)


def test_no_comment_points_outside_the_repository() -> None:
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted(PACKAGE.rglob("*.j2")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []
