"""Task-vector merges — mergekit's "generalized task arithmetic", shared by `merge.task_arithmetic`,
`merge.ties` and `merge.dare`.

Per tensor, with base θ₀ and models θᵢ (weights wᵢ):

    τᵢ = trimᵢ(θᵢ − θ₀)                     TIES: top-density by magnitude; DARE: random keep
                                            (× ‖τ‖₁ / ‖trimmed τ‖₁ when rescale is on)
    uᵢ = wᵢ · τᵢ
    consensus (TIES sign election):  s = sign(Σᵢ uᵢ) (+ where the sum is 0);
        mᵢ = [sign(uᵢ) = s],  Δ = Σᵢ mᵢ uᵢ,  d = Σᵢ mᵢ wᵢ (1 where 0)
    no consensus:  Δ = Σᵢ uᵢ,  d = Σᵢ wᵢ (1 where |d| < 1e-8)
    θ = θ₀ + λ · (Δ / d if normalize else Δ)

in float32, chunk by chunk, rounded once. A trim that needs whole-tensor statistics (the
magnitude cut, the rescale norms) sees the full float32 task vector first, one model at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .merge_kernel import chunk32, flat, row_length, spans
from .merging import TensorMerge
from .tasks import Merge, Task


class Prepared(Protocol):
    """A trim fitted to one task vector: applies itself to a chunk of it."""

    def apply(self, delta: torch.Tensor, span: slice) -> torch.Tensor: ...


class Trim(Protocol):
    """How one model's task vector is sparsified (hashable: it is part of a task)."""

    @property
    def keeps_all(self) -> bool:
        """Whether nothing is dropped (density ≥ 1: mergekit then leaves the vector as it is)."""
        ...

    @property
    def needs_statistics(self) -> bool:
        """Whether `prepare` must see the whole task vector (else it gets None)."""
        ...

    def prepare(self, delta: torch.Tensor | None) -> Prepared:
        """Fit to the flat float32 task vector (which it may overwrite)."""
        ...


@dataclass(frozen=True)
class DensityTrim:
    """What TIES' and DARE's trims share: keep a `density` fraction of each task vector, and
    L1-rescale what is kept when `rescale` is on."""

    density: float
    rescale: bool

    @property
    def keeps_all(self) -> bool:
        return self.density >= 1


@dataclass(frozen=True)
class Rescaled:
    """`delta · keep(span) · factor`: a trim's mask with mergekit's L1 rescale factor."""

    keep: Callable[[torch.Tensor, slice], torch.Tensor]  # (|chunk|, its span) -> bool mask
    factor: float = 1.0

    def apply(self, delta: torch.Tensor, span: slice) -> torch.Tensor:
        kept = delta.mul_(self.keep(delta.abs(), span))
        return kept.mul_(self.factor) if self.factor != 1.0 else kept


def l1_factor(magnitudes: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> float:
    """mergekit's `rescaled_masked_tensor` (l1) from |τ| and the mask: ‖τ‖₁ / ‖τ·mask‖₁, or 1
    when either is below eps."""
    before = magnitudes.sum()
    after = (magnitudes * kept).sum()
    if before < eps or after < eps:
        return 1.0
    return float(before / after)


def plan_task_vectors(
    tensor: TensorMerge, trims: Sequence[Trim | None], *, consensus: bool, normalize: bool, scale: float
) -> Task:
    """The task for one tensor; `trims` has one entry per non-base contribution."""
    base = tensor.base
    assert base is not None, "task-vector methods always have a base"
    others = tensor.others
    weights = tuple(float(c.parameters["weight"]) for c in others)
    parameters = (
        ("weights", weights),
        ("trims", tuple(trims)),
        ("consensus", consensus),
        ("normalize", normalize),
        ("scale", float(scale)),
    )
    return Merge(task_vector_kernel, (base.task, *(c.task for c in others)), parameters)


def task_vector_kernel(
    values: Sequence[torch.Tensor],
    out_dtype: torch.dtype,
    *,
    weights: tuple[float, ...],
    trims: tuple[Trim | None, ...],
    consensus: bool,
    normalize: bool,
    scale: float,
) -> torch.Tensor:
    """See the module docstring; `values` = (base, model₁, …)."""
    base, others = flat(values[0]), [flat(v) for v in values[1:]]
    numel, row = base.numel(), row_length(values[0].shape)
    fitted = [_fit(trim, other, base) for trim, other in zip(trims, others, strict=True)]
    out = torch.empty(numel, dtype=out_dtype, device=base.device)
    weight_sum = torch.tensor(weights, dtype=torch.float32).sum()
    for span in spans(numel, row):
        start = chunk32(base, span)
        deltas = []
        for other, prepared, weight in zip(others, fitted, weights, strict=True):
            delta = chunk32(other, span).sub_(start)
            if prepared is not None:
                delta = prepared.apply(delta, span)
            deltas.append(delta.mul_(weight))
        mixed = _combine(deltas, weights, weight_sum, consensus, normalize)
        if scale != 1.0:
            mixed.mul_(scale)
        out[span] = start.add_(mixed)
    return out.view(values[0].shape)


def _fit(trim: Trim | None, other: torch.Tensor, base: torch.Tensor) -> Prepared | None:
    if trim is None or trim.keeps_all:
        return None
    if not trim.needs_statistics:
        return trim.prepare(None)
    delta = torch.empty(base.numel(), dtype=torch.float32, device=base.device)
    for span in spans(base.numel()):
        delta[span] = chunk32(other, span).sub_(chunk32(base, span))
    return trim.prepare(delta)


def _combine(
    deltas: list[torch.Tensor], weights: tuple[float, ...], weight_sum: torch.Tensor, consensus: bool, normalize: bool
) -> torch.Tensor:
    if not consensus:
        mixed = _sum(deltas)
        if normalize:
            divisor = weight_sum if weight_sum.abs() >= 1e-8 else torch.ones(())
            mixed.div_(divisor.to(mixed.device))
        return mixed
    total = _sum(deltas)
    elected = torch.where(total >= 0, 1.0, -1.0)  # + where the weighted sum is ≥ 0
    mixed = torch.zeros_like(total)
    divisor = torch.zeros_like(total)
    for delta, weight in zip(deltas, weights, strict=True):
        agrees = delta.mul(elected).gt_(0)  # 1.0 where sign(delta) is the elected sign (0 agrees with none)
        mixed.addcmul_(delta, agrees)
        divisor.add_(agrees, alpha=weight)
    if normalize:
        mixed.div_(divisor.masked_fill_(divisor == 0, 1))
    return mixed


def _sum(values: list[torch.Tensor]) -> torch.Tensor:
    total = values[0].clone()
    for value in values[1:]:
        total.add_(value)
    return total
