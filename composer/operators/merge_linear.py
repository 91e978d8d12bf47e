"""`merge.linear`: a weighted average of models (model soups) — mergekit's `linear`.

    - op: merge.linear
      models:
        - {bank: a@v1, weight: 0.7}
        - {bank: b@v1, weight: 0.3}
      normalize: true              # divide by Σ weight (default, as mergekit)

θ = Σᵢ wᵢ θᵢ / Σᵢ wᵢ (no division when `normalize` is false), per tensor, float32, rounded once.
No base model takes part; the composition's base only gives the config and files (name it among
the models to average it too). A tensor whose weights sum to 0 under `normalize` is refused
(mergekit divides by zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from ..merge_kernel import elementwise
from ..merge_parameters import BOOL, NUMBER, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState, PlanProblem
from ..oracle import OracleContext
from ..tasks import Merge, Task

NAME = "merge.linear"
METHOD = MergeMethod(
    NAME,
    "linear",
    (Parameter("weight", NUMBER, per_model=True, on_base=True), Parameter("normalize", BOOL, True)),
)


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    return plan_merge(state, step, source, METHOD, _task)


def _task(tensor: TensorMerge) -> Task:
    weights = tuple(float(c.parameters["weight"]) for c in tensor.contributions)
    normalize = bool(tensor.parameters["normalize"])
    if normalize and sum(weights) == 0:
        raise PlanProblem(f"{tensor.name}: the weights sum to 0, so normalize would divide by zero")
    sources = tuple(c.task for c in tensor.contributions)
    return Merge(linear_kernel, sources, (("weights", weights), ("normalize", normalize)))


def linear_kernel(
    values: Sequence[torch.Tensor], out_dtype: torch.dtype, *, weights: tuple[float, ...], normalize: bool
) -> torch.Tensor:
    """Σ wᵢ xᵢ (÷ Σ wᵢ), accumulated in input order as mergekit does."""
    coefficients = torch.tensor(weights, dtype=torch.float32)
    denominator = coefficients.sum()

    def combine(chunks: list[torch.Tensor], _span: slice) -> torch.Tensor:
        total = torch.zeros_like(chunks[0])
        for chunk, coefficient in zip(chunks, coefficients.to(total.device), strict=True):
            total.addcmul_(chunk, coefficient)
        return total.div_(denominator.to(total.device)) if normalize else total

    return elementwise(values, out_dtype, combine)


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `linear` on the exported models."""
    from ..mergekit_oracle import run_mergekit

    return run_mergekit(model, step, context, METHOD)
