"""Logging set-up for the CLI (library code only calls ``logging.getLogger(__name__)``)."""

from __future__ import annotations

import logging
import os


def setup_logging(verbose: int = 0) -> None:
    """Log to stderr; only rank 0 logs INFO under torchrun (others log warnings)."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose > 1 else logging.INFO
    if rank != 0:
        level = logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S")
