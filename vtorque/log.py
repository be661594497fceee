"""The node's log: one line per hook decision or failure, in config.log_file."""

from __future__ import annotations

import logging
import os

from vtorque.config import Config

_configured: set[str] = set()


def node_logger(config: Config) -> logging.Logger:
    """A logger appending to the node's log file; never fails the caller (a log that
    cannot be opened only loses the log, not the job)."""
    logger = logging.getLogger("vtorque")
    if config.log_file not in _configured:
        _configured.add(config.log_file)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            os.makedirs(os.path.dirname(config.log_file), mode=0o755, exist_ok=True)
            handler = logging.FileHandler(config.log_file)
            handler.setFormatter(logging.Formatter(
                "%(asctime)s %(process)d %(levelname)s %(message)s"))
            logger.addHandler(handler)
        except OSError:
            logger.addHandler(logging.NullHandler())
    return logger
