"""Low-rank merges, `W + Σ factorᵢ · (Bᵢ Aᵢ)[ᵀ]`, in one pass over the weight.

Every term is first written in the weight's own orientation as a (left, right) pair — (B, A),
or (Aᵀ, Bᵀ) for a transposed delta (GPT-2's Conv1D, embeddings) — with its factor folded into
`right` (r × in: a small matrix), and the pairs of all terms are concatenated: several adapters
on one weight are one matrix product of rank Σr. Then, block of rows by block of rows (see
`row_blocks`), the weight's rows are widened into a float32 buffer, `addmm_` adds
`left[rows] @ right` to them (one GEMM with β = 1), and the block is rounded into the output.
The weight is read once and the output written once; the passes in between touch a block that
stays in the cache. PEFT's merge makes four passes over every weight (matmul, scale, add, cast).

A bfloat16 weight whose factors bfloat16 holds exactly (adapters saved in bf16, a power-of-two
scale) skips the float32 block on a CPU with bf16 instructions: one bf16 `addmm` per block,
which oneDNN computes with float32 products and sums, adds the weight in float32 and rounds
once — the same arithmetic with no widening and narrowing passes (≈ 2× faster there).

Exactness against PEFT's `merge_and_unload` (float32; measured in docs/composer.md). Folding a
factor that is a power of two into `right` rounds nothing, so for one adapter whose scale is
a power of two (`lora_alpha` = r or 2r at weight 1: the common case) the fused pass is PEFT's
merge bit for bit. Any other factor would round once more inside the product instead of after
it — within the GEMM's own error bound, but enough to move a tiny GPT-2's logits by 1.5e-5 —
so a single term with such a factor takes PEFT's arithmetic instead: the product, the scale,
the add, each rounded as PEFT rounds them (bit-identical, ≈ 1.3× the time on that weight).
Several terms take the fused rank-Σr product (the sum of the adapters, as PEFT's `cat`
combination computes it, to float32 rounding); `exact=True` (`compose --exact-peft`) makes them
PEFT's own merge of the adapters one after the other, bit for bit. The bf16 GEMM sums the
products in its own order: its result is PEFT's float32 merge rounded to bf16 in all but a few
elements per million, which are one bf16 ulp away (their float32 sums straddle a rounding
boundary) or, where W + ΔW cancels to almost nothing, a float32 ulp of W; `exact=True` keeps
the float32 block there too.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from .row_blocks import for_row_blocks, rows_per_block, scratch

# (b, a, factor, transpose) of one term, b and a float32 on the weight's device.
Term = tuple[torch.Tensor, torch.Tensor, float, bool]


def oriented(terms: list[Term]) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(left, right, factor) per term, with left @ right the delta in the weight's layout."""
    return [((a.t(), b.t()) if transpose else (b, a)) + (factor,) for b, a, factor, transpose in terms]


def merged_factors(terms: list[Term]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with L @ R = Σ factorᵢ · ΔWᵢ: the lefts side by side, the rights stacked, each
    right scaled by its factor."""
    pairs = oriented(terms)
    left = torch.cat([left for left, _, _ in pairs], dim=1) if len(pairs) > 1 else pairs[0][0]
    right = torch.cat([right * factor for _, right, factor in pairs], dim=0)
    return left.contiguous(), right


def low_rank_update(base: torch.Tensor, terms: list[Term], out: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """`out` = base + Σ factor · ΔW, computed in float32 and rounded once into `out` (any float
    dtype, the shape of `base`; it may be `base` itself when that is a float32 tensor the caller
    owns). `exact`: PEFT's arithmetic for several terms too (see the module docstring)."""
    exact = exact or (len(terms) == 1 and not _power_of_two(terms[0][2]))
    rows, cols = base.shape
    step = rows_per_block(rows, cols * 4)
    device = base.device
    in_place = out.data_ptr() == base.data_ptr()
    direct = out.dtype == torch.float32 and base.dtype == torch.float32  # no float32 block needed
    if exact:
        pairs = [(left.contiguous(), right.contiguous(), factor) for left, right, factor in oriented(terms)]

        def exact_rows(start: int, stop: int) -> None:
            count = (stop - start) * cols
            buffers = scratch(2 * count, device)
            block = out[start:stop] if direct else buffers[:count].view(stop - start, cols)
            product = buffers[count:].view(stop - start, cols)
            if not in_place:
                block.copy_(base[start:stop])
            for left, right, factor in pairs:  # PEFT: W += (B @ A) * scale, adapter by adapter
                torch.mm(left[start:stop], right, out=product)
                block.add_(product.mul_(factor))
            if not direct:
                out[start:stop].copy_(block)

        for_row_blocks(rows, step, exact_rows, device)
        return out
    left, right = merged_factors(terms)
    if not in_place and base.dtype == out.dtype == torch.bfloat16 and bfloat16_gemm_is_native(device):
        half_left, half_right = _exactly_bfloat16(left), _exactly_bfloat16(right)
        if half_left is not None and half_right is not None:
            halves = half_left, half_right

            def bfloat16_rows(start: int, stop: int) -> None:  # float32 accumulation, β·C added, one rounding
                torch.addmm(base[start:stop], halves[0][start:stop], halves[1], out=out[start:stop])

            for_row_blocks(rows, step, bfloat16_rows, device)
            return out

    def fused_rows(start: int, stop: int) -> None:
        if in_place:
            out[start:stop].addmm_(left[start:stop], right)
        elif direct:
            torch.addmm(base[start:stop], left[start:stop], right, out=out[start:stop])
        else:
            block = scratch((stop - start) * cols, device).view(stop - start, cols)
            block.copy_(base[start:stop])
            block.addmm_(left[start:stop], right)
            out[start:stop].copy_(block)

    for_row_blocks(rows, step, fused_rows, device)
    return out


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return frozenset(next((line for line in cpuinfo if line.startswith("flags")), "").split())
    except OSError:  # not Linux
        return frozenset()


def bfloat16_gemm_is_native(device: torch.device) -> bool:
    """Whether torch multiplies bfloat16 matrices on this CPU with its own bf16 instructions
    (oneDNN on AVX512-BF16 or AMX). Elsewhere torch's bf16 GEMM is a scalar loop, 40× slower
    than float32."""
    return (
        device.type == "cpu"
        and torch.backends.mkldnn.is_available()
        and bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    )


def _exactly_bfloat16(factor: torch.Tensor) -> torch.Tensor | None:
    """The (contiguous float32) factor in bfloat16 if that holds it exactly — its low 16 bits
    are zero: factors saved in bf16, scaled by a power of two — else None."""
    if factor.view(torch.int32).bitwise_and(0xFFFF).any():
        return None
    return factor.bfloat16()


def _power_of_two(factor: float) -> bool:
    """Whether multiplying by `factor` is exact in float32 (barring subnormal results)."""
    return (
        factor != 0
        and math.isfinite(factor)
        and math.frexp(abs(factor))[0] == 0.5
        and 2.0**-126 <= abs(factor) < 2.0**127
    )
