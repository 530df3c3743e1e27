"""Progress bars with rate and ETA, silent off rank 0 and when disabled."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = None) -> Iterator[T]:
    """Wrap an iterable in a tqdm bar (items/s and ETA) on stderr.

    Args:
        disable: force off; by default off on ranks other than 0 and when CTXRAY_NO_PROGRESS is set.
    """
    from tqdm.auto import tqdm

    if disable is None:
        disable = int(os.environ.get("RANK", "0")) != 0 or bool(os.environ.get("CTXRAY_NO_PROGRESS"))
    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                     mininterval=1.0))
