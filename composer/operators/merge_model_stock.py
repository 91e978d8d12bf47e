"""`merge.model_stock`: Model Stock (Jang et al. 2024) — mergekit's `model_stock`.

    - op: merge.model_stock        # the composition's base is the pre-trained anchor θ₀
      models: [{bank: ft1@v1}, {bank: ft2@v1}, {bank: ft3@v1}]
      filter_wise: false           # one ratio per row instead of per tensor

Per tensor (per row with `filter_wise`): offsets δᵢ = θᵢ − θ₀ of the N ≥ 2 fine-tuned models,
cos θ = mean over pairs i < j of ⟨δᵢ, δⱼ⟩ / max(‖δᵢ‖‖δⱼ‖, 1e-6) (clamped to [−1, 1]),
t = N cos θ / (1 + (N − 1) cos θ) (0 where the denominator is below 1e-6), and
θ = t · mean(θᵢ) + (1 − t) · θ₀ — float32, two passes over the chunks, rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch
from transformers import PreTrainedModel

from ..merge_kernel import chunk32, flat, spans
from ..merge_parameters import BOOL, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..tasks import Merge, Task

NAME = "merge.model_stock"
METHOD = MergeMethod(NAME, "model_stock", (Parameter("filter_wise", BOOL, False),), needs_base=True, min_inputs=3)


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    return plan_merge(state, step, source, METHOD, _task)


def _task(tensor: TensorMerge) -> Task:
    base = tensor.base
    assert base is not None
    sources = (base.task, *(c.task for c in tensor.others))
    return Merge(model_stock_kernel, sources, (("filter_wise", bool(tensor.parameters["filter_wise"])),))


def model_stock_kernel(values: Sequence[torch.Tensor], out_dtype: torch.dtype, *, filter_wise: bool) -> torch.Tensor:
    """mergekit's `model_stock` for one tensor (module docstring)."""
    base, others = flat(values[0]), [flat(v) for v in values[1:]]
    shape = values[0].shape
    row = shape[-1] if filter_wise and len(shape) >= 2 else 0  # 0: one ratio for the whole tensor
    rows = base.numel() // row if row else 1
    chunks = list(spans(base.numel(), row or 1))

    def lines(span: slice) -> slice:
        return slice(span.start // row, span.stop // row) if row else slice(0, 1)

    def view(value: torch.Tensor) -> torch.Tensor:
        return value.view(-1, row) if row else value.view(1, -1)

    count = len(others)
    pairs = list(combinations(range(count), 2))
    dots = torch.zeros((len(pairs), rows), device=base.device)
    squares = torch.zeros((count, rows), device=base.device)
    for span in chunks:
        start = view(chunk32(base, span))
        offsets = [view(chunk32(o, span)).sub_(start) for o in others]
        for number, (i, j) in enumerate(pairs):
            dots[number, lines(span)] += (offsets[i] * offsets[j]).sum(dim=-1)
        for i, offset in enumerate(offsets):
            squares[i, lines(span)] += offset.square().sum(dim=-1)
    norms = squares.sqrt()
    cosines = [(dots[n] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1) for n, (i, j) in enumerate(pairs)]
    cos_theta = torch.stack(cosines).mean(dim=0)
    denominator = 1 + (count - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    ratio = torch.where(singular, torch.zeros_like(cos_theta), count * cos_theta / safe)
    out = torch.empty(base.numel(), dtype=out_dtype, device=base.device)
    for span in chunks:
        t = ratio[lines(span)].unsqueeze(-1)
        start = view(chunk32(base, span))
        average = sum((view(chunk32(o, span)) for o in others), torch.zeros_like(start)) / count
        out[span] = (t * average + (1 - t) * start).reshape(-1)
    return out.view(shape)


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `model_stock` on the exported models."""
    from ..mergekit_oracle import run_mergekit

    return run_mergekit(model, step, context, METHOD)
