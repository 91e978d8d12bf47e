"""Progress bars for long work, in bytes or in steps (tqdm on stderr; silent when disabled)."""

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
    with _bar(total, description, enabled, "B") as advance:
        yield advance


@contextmanager
def step_progress(total: int, description: str, enabled: bool, unit: str = "step") -> Iterator[Advance]:
    """Yield a function that advances the bar by a number of steps (probes, objects…); a
    `total` of 0 means unknown (the bar counts up)."""
    with _bar(total, description, enabled, unit) as advance:
        yield advance


@contextmanager
def _bar(total: int, description: str, enabled: bool, unit: str) -> Iterator[Advance]:
    if not enabled:
        yield lambda _n: None
        return
    from tqdm import tqdm

    in_bytes = unit == "B"
    with tqdm(
        total=total or None, desc=description, unit=unit, unit_scale=in_bytes, unit_divisor=1024 if in_bytes else 1000,
        leave=False, file=sys.stderr,
    ) as bar:  # fmt: skip
        yield bar.update
