"""The node's log: one line per hook decision or failure, in config.log_file.

Root appends to it for every job, so it is opened the way every root-side file is: its
directory verified (made by root if missing), the file opened without following a link,
created if missing, and refused unless it is root's regular file with one link. A planted
symlink or hard link at its place would otherwise make root append to any file."""

from __future__ import annotations

import logging
import os

from vtorque.config import Config
from vtorque.errors import NodeError

_configured: set[str] = set()
LOG_MODE = 0o640
LINE_MAX = 4000


class OneLineFormatter(logging.Formatter):
    """Every record is one bounded line, whatever a caller put into it: messages carry
    values users chose (job names, requests, batch output), and a line break in one must
    not forge a line of root's log."""

    def format(self, record: logging.LogRecord) -> str:
        from vtorque.text import one_line
        return one_line(super().format(record), LINE_MAX)


def open_log(path: str) -> int:
    """A descriptor appending to the node's log (NodeError or OSError when it must not or
    cannot be opened)."""
    from vtorque.files import ensure_trusted_dir, open_append
    ensure_trusted_dir(os.path.dirname(path), 0o755)
    return open_append(path, LOG_MODE)


def log_problem(path: str) -> str | None:
    """Why the node's log cannot be opened safely, or None (for `vtorque config check`)."""
    from vtorque.files import FILE, path_problem
    return (path_problem(os.path.dirname(path), missing_ok=True)
            or path_problem(path, FILE, missing_ok=True, single_link=True,
                            follow_last=False))


def node_logger(config: Config) -> logging.Logger:
    """A logger appending to the node's log file; never fails the caller (a log that
    cannot be opened only loses the log, not the job; `vtorque config check` says why)."""
    logger = logging.getLogger("vtorque")
    if config.log_file not in _configured:
        _configured.add(config.log_file)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            stream = os.fdopen(open_log(config.log_file), "a", encoding="utf-8",
                               errors="backslashreplace")
            handler: logging.Handler = logging.StreamHandler(stream)
            handler.setFormatter(OneLineFormatter(
                "%(asctime)s %(process)d %(levelname)s %(message)s"))
        except (OSError, NodeError):
            handler = logging.NullHandler()
        logger.addHandler(handler)
    return logger
