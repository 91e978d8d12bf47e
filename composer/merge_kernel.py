"""What the `merge.*` kernels share: walking same-shaped tensors in float32 chunks.

A kernel receives its sources as stored (memory-mapped, bf16 or fp32) and writes its result
into one output tensor of the target dtype, a span of rows at a time: each span is converted to
float32, combined, and rounded once into the output. So a merge of N models holds the output,
a few float32 chunks of about `CHUNK_ELEMENTS` each, and only for methods that need whole-tensor
statistics first (TIES' magnitude cut, DARE's rescale, SLERP's angle) one float32 tensor at a time
in a first pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

CHUNK_ELEMENTS = 1 << 22  # 16 MiB of float32 per chunk and source


def flat(value: torch.Tensor) -> torch.Tensor:
    """The tensor as one dimension (a view when it is contiguous)."""
    return value.reshape(-1)


def spans(numel: int, row: int = 1) -> Iterator[slice]:
    """Consecutive flat ranges covering `numel` elements, each a whole number of `row`s."""
    step = max(row, CHUNK_ELEMENTS // max(row, 1) * row)
    for start in range(0, numel, step):
        yield slice(start, min(numel, start + step))


def chunk32(value: torch.Tensor, span: slice) -> torch.Tensor:
    """`value[span]` as a new float32 tensor, which the caller may change in place (sources are
    shared, memory-mapped tensors and are never written)."""
    return value[span].to(torch.float32, copy=True)


def row_length(shape: Sequence[int]) -> int:
    """Elements per row (per index of the first axis); the whole tensor for 0-d and 1-d ones."""
    if len(shape) < 2:
        return max(1, int(torch.Size(shape).numel()))
    return int(torch.Size(shape[1:]).numel())


def elementwise(
    values: Sequence[torch.Tensor],
    out_dtype: torch.dtype,
    combine: Callable[[list[torch.Tensor], slice], torch.Tensor],
) -> torch.Tensor:
    """`combine(float32 chunks of every value, span)` over the whole tensor, into a new tensor of
    `out_dtype` shaped like the first value."""
    first = values[0]
    sources = [flat(v) for v in values]
    out = torch.empty(first.numel(), dtype=out_dtype, device=first.device)
    for span in spans(first.numel(), row_length(first.shape)):
        out[span] = combine([chunk32(s, span) for s in sources], span)
    return out.view(first.shape)
