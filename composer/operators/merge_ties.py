"""`merge.ties`: TIES-merging (Yadav et al. 2023) — mergekit's `ties`.

    - op: merge.ties               # the composition's base is the base model
      models:
        - {bank: math@v1, weight: 0.6, density: 0.5}
        - {bank: code@v1, weight: 0.4, density: 0.7}
      normalize: true              # divide by the agreeing weights (default)
      lambda: 1.0                  # scale of the merged task vector
      rescale: false               # L1-rescale each trimmed task vector (mergekit's rescale)

Per tensor: each task vector τᵢ = θᵢ − θ₀ keeps its top `density` fraction by magnitude
(k = max(1, ⌊density·n⌋) entries; density ≥ 1 keeps all); the sign of Σ wᵢτᵢ is elected per
entry; entries that agree with it are averaged, weighted (disjoint mean, divided by the sum of
the agreeing weights when `normalize`); θ = θ₀ + λ·that. See `composer/task_vectors.py`.

`top_magnitude_mask` is the reusable "keep the top fraction by magnitude" rule. Entries tied at
the cut are kept in flat-index order, so the choice is the same on every device (mergekit's
argsort picks among ties arbitrarily; on float32 data ties are rare, on bf16 deltas common).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from ..magnitudes import kth_largest
from ..merge_parameters import BOOL, NUMBER, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..task_vectors import DensityTrim, Rescaled, l1_factor, plan_task_vectors
from ..tasks import Task

NAME = "merge.ties"
WEIGHT = Parameter("weight", NUMBER, per_model=True, help="the model's weight")
DENSITY = Parameter("density", NUMBER, 1.0, per_model=True, help="fraction of the task vector kept")
LAMBDA = Parameter("lambda", NUMBER, 1.0, help="scale of the merged task vector")
INT8_MASK = Parameter("int8_mask", BOOL, False, help="mergekit's mask dtype; no effect on the result")
METHOD = MergeMethod(
    NAME,
    "ties",
    (WEIGHT, DENSITY, Parameter("normalize", BOOL, True), LAMBDA, Parameter("rescale", BOOL, False), INT8_MASK),
    needs_base=True,
)


@dataclass(frozen=True)
class MagnitudeCut:
    """The top-k entries of a magnitude tensor: every entry above `threshold`, and those equal to
    it up to flat index `last_tie` (ties kept in index order until there are k)."""

    threshold: float
    last_tie: int

    @classmethod
    def of(cls, magnitudes: torch.Tensor, k: int) -> MagnitudeCut:
        """The cut keeping `k` (1 ≤ k ≤ n) entries of a flat float32 tensor of magnitudes (≥ 0):
        the k-th largest value by radix select (`kth_largest`), then ties in index order."""
        threshold = kth_largest(lambda: [magnitudes], k)
        needed = k - int((magnitudes > threshold).sum())
        ties = (magnitudes == threshold).nonzero().squeeze(1)  # flat indices, ascending
        return cls(threshold, int(ties[needed - 1]))

    def mask(self, magnitudes: torch.Tensor, span: slice) -> torch.Tensor:
        """Which entries of `magnitudes` (the flat range `span` of the tensor) are kept."""
        kept = magnitudes > self.threshold
        if self.last_tie >= span.start:
            ties = magnitudes == self.threshold
            ties[self.last_tie - span.start + 1 :] = False
            kept |= ties
        return kept


def top_k(density: float, numel: int) -> int:
    """How many entries `density` keeps: mergekit's max(1, ⌊density·n⌋) (all when ≥ 1, none when ≤ 0)."""
    if density >= 1:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def top_magnitude_mask(values: torch.Tensor, density: float) -> torch.Tensor:
    """A bool mask of the `density` fraction of `values` largest in magnitude (see `top_k`;
    ties at the cut kept in flat-index order). Usable by any trim: TIES, DARE-free pruning."""
    magnitudes = values.detach().reshape(-1).abs().float()
    k = top_k(density, magnitudes.numel())
    if k in (0, magnitudes.numel()):
        return torch.full(values.shape, k > 0, dtype=torch.bool, device=values.device)
    return MagnitudeCut.of(magnitudes, k).mask(magnitudes, slice(0, magnitudes.numel())).view(values.shape)


@dataclass(frozen=True)
class MagnitudeTrim(DensityTrim):
    """TIES' trim of one task vector: its top `density` by magnitude, L1-rescaled if asked."""

    @property
    def needs_statistics(self) -> bool:
        return True

    def prepare(self, delta: torch.Tensor | None) -> Rescaled:
        assert delta is not None
        k = top_k(self.density, delta.numel())
        if k == 0:
            return Rescaled(lambda magnitudes, _span: torch.zeros_like(magnitudes, dtype=torch.bool))
        magnitudes = delta.abs_()
        cut = MagnitudeCut.of(magnitudes, k)
        factor = l1_factor(magnitudes, cut.mask(magnitudes, slice(0, magnitudes.numel()))) if self.rescale else 1.0
        return Rescaled(cut.mask, factor)


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    return plan_merge(state, step, source, METHOD, _task)


def _task(tensor: TensorMerge) -> Task:
    rescale = bool(tensor.parameters["rescale"])
    trims = [MagnitudeTrim(float(c.parameters["density"]), rescale) for c in tensor.others]
    return plan_task_vectors(
        tensor, trims, consensus=True, normalize=tensor.parameters["normalize"], scale=tensor.parameters["lambda"]
    )


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `ties` on the exported models."""
    from ..mergekit_oracle import run_mergekit

    return run_mergekit(model, step, context, METHOD)
