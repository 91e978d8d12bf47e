"""`merge.slerp`: spherical interpolation between the base and one other model — mergekit's `slerp`.

    - op: merge.slerp              # the composition's base is θ₀ (t = 0)
      models: [{bank: base@v1}, {bank: chat@v1}]
      t:                           # a number, a gradient over the layers, or per-filter values
        - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}
        - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
        - value: 0.5

Per tensor, flattened (mergekit's formula): with a = θ₀, b = θ₁, norms n = ‖·‖ (1 if ≤ 1e-8),
d = clamp(⟨a/nₐ, b/n_b⟩, −1, 1); if |d| > 0.9995 the two are nearly colinear and
θ = (1 − t)·a + t·b; else Ω = arccos d and θ = sin((1 − t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b —
in float32, in chunks (two passes: norms and angle, then the blend), rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from ..merge_kernel import chunk32, elementwise, flat, spans
from ..merge_parameters import NUMBER, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..tasks import Merge, Task

NAME = "merge.slerp"
METHOD = MergeMethod(
    NAME, "slerp", (Parameter("t", NUMBER, help="0: the base, 1: the other model"),), needs_base=True,
    min_inputs=2, max_inputs=2,
)  # fmt: skip
DOT_THRESHOLD = 0.9995
EPS = 1e-8


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    return plan_merge(state, step, source, METHOD, _task)


def _task(tensor: TensorMerge) -> Task:
    base, (other,) = tensor.base, tensor.others
    assert base is not None
    return Merge(slerp_kernel, (base.task, other.task), (("t", float(tensor.parameters["t"])),))


def slerp_kernel(values: Sequence[torch.Tensor], out_dtype: torch.dtype, *, t: float) -> torch.Tensor:
    """mergekit's `slerp` for one tensor (module docstring)."""
    a, b = flat(values[0]), flat(values[1])
    chunks = list(spans(a.numel()))
    norm_a = _norm(a, chunks)
    norm_b = _norm(b, chunks)
    dot = torch.stack([(chunk32(a, s) / norm_a * (chunk32(b, s) / norm_b)).sum() for s in chunks]).sum()
    dot = dot.clamp(-1, 1)
    time = torch.tensor(t, dtype=torch.float32, device=a.device)
    if dot.abs() > DOT_THRESHOLD:
        coef_a, coef_b = 1 - time, time
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        coef_a, coef_b = torch.sin((1 - time) * theta) / sin_theta, torch.sin(time * theta) / sin_theta
    return elementwise(values, out_dtype, lambda pair, _span: pair[0].mul_(coef_a).add_(pair[1].mul_(coef_b)))


def _norm(value: torch.Tensor, chunks: list[slice]) -> torch.Tensor:
    """‖value‖ as the norm of its chunks' norms (as mergekit takes it); 1 when ≤ EPS."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(chunk32(value, s)) for s in chunks]))
    return torch.where(norm > EPS, norm, torch.ones_like(norm))


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `slerp` on the exported models."""
    from ..mergekit_oracle import run_mergekit

    return run_mergekit(model, step, context, METHOD)
