"""Byte progress bars for long transfers (tqdm on stderr; silent when disabled)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Advance = Callable[[int], object]


def progress_wanted(quiet: bool) -> bool:
    """Bars only for people: not with --quiet, not when stderr is not a terminal."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def byte_progress(total: int, description: str, enabled: bool) -> Iterator[Advance]:
    """Yield a function that advances the bar by a number of bytes."""
    if not enabled:
        yield lambda _n: None
        return
    from tqdm import tqdm

    with tqdm(
        total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr
    ) as bar:
        yield bar.update
