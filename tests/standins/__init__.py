"""Stand-in batch-system commands for tests (Torque and OpenPBS cannot be installed here;
the Slurm ones let unit tests run without a running Slurm).

Protocol (also in standin_db.py):
- `install(kind, bin_dir, jobs=..., nodes=...)` symlinks tests/standins/<kind>/* into a
  per-test `bin_dir`, writes the DB (JSON) next to it and `bin_dir/db.path` naming it, so
  the stand-ins find their DB even when run with a clean environment (as hooks run them).
  $VTORQUE_STANDIN_DB, when set, wins over db.path.
- Every call appends {"prog": name, "argv": [name, args...]} to `<db>.calls` (calls()).
- Failure injection: DB key "fail": {"<prog>": {"exit": N, "stderr": "...", "stdout": ""}};
  a hanging server: "delay": {"<prog>": seconds}.
Nothing is shared between tests, so pytest-xdist workers never meet.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STANDINS = Path(__file__).resolve().parent
KINDS = ("torque", "openpbs", "slurm")


def install(kind: str, bin_dir: Path, jobs: dict[str, Any] | None = None,
            nodes: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Put the `kind` stand-ins into bin_dir with a fresh DB; return the DB path."""
    if kind not in KINDS:
        raise ValueError(kind)
    bin_dir.mkdir(parents=True, exist_ok=True)
    for exe in sorted((STANDINS / kind).iterdir()):
        link = bin_dir / exe.name
        if not link.exists():
            link.symlink_to(exe)
    db = bin_dir.parent / f"{bin_dir.name}-{kind}-db.json"
    write_db(db, {"jobs": jobs or {}, "nodes": nodes or {}, **extra})
    (bin_dir / "db.path").write_text(str(db) + "\n", encoding="utf-8")
    return db


def write_db(db: Path, data: dict[str, Any]) -> None:
    tmp = db.with_name(db.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, db)


def read_db(db: Path) -> dict[str, Any]:
    return json.loads(db.read_text(encoding="utf-8"))


def calls(db: Path) -> list[dict[str, Any]]:
    path = Path(str(db) + ".calls")
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
