"""Order statistics of magnitudes, exact and streaming: what every trim (TIES, DARE-free
pruning, `consolidate.prune`) needs to find its cut."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

_HIGH = 1 << 15  # non-negative float32 bit patterns, split in a high and a low half of 16 bits


def kth_largest(chunks: Callable[[], Iterable[torch.Tensor]], k: int) -> float:
    """The k-th largest value among the non-negative float32 tensors `chunks()` yields, or
    the smallest if there are fewer than k (+∞ for k = 0). `chunks` is called twice: a radix
    select on the bit patterns, exact, one chunk in memory at a time."""
    if k <= 0:
        return math.inf
    high = torch.zeros(_HIGH, dtype=torch.int64)
    for chunk in chunks():
        high += torch.bincount(_bits(chunk) >> 16, minlength=_HIGH).cpu()
    above = torch.flip(high, [0]).cumsum(0)  # above[i]: entries whose high half is ≥ _HIGH − 1 − i
    k = min(k, int(above[-1]))
    if k == 0:
        return math.inf
    top = int(torch.searchsorted(above, k))
    prefix = _HIGH - 1 - top
    before = int(above[top - 1]) if top else 0
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for chunk in chunks():
        bits = _bits(chunk)
        low += torch.bincount(bits[(bits >> 16) == prefix] & 0xFFFF, minlength=1 << 16).cpu()
    position = int(torch.searchsorted(torch.flip(low, [0]).cumsum(0), k - before))
    pattern = torch.tensor([(prefix << 16) | ((1 << 16) - 1 - position)], dtype=torch.int32)
    return float(pattern.view(torch.float32))


def _bits(magnitudes: torch.Tensor) -> torch.Tensor:
    return magnitudes.reshape(-1).contiguous().view(torch.int32)  # ≥ 0: ordered as the floats
