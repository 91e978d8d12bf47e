"""`consolidate.prune`: trim the change from a parent to its largest entries (TIES' trim step).

    - op: consolidate.prune
      parent: my-model@v1       # a base or expansion bank: Δ = W − W_parent
      keep: 0.2                 # keep the top 20 % of |Δ|…
      # threshold: 1.0e-3       # …or every entry with |Δ| > τ
      scope: tensor             # tensor: the fraction per tensor | global: over the whole model

W′ = W_parent + mask·Δ, computed as a selection — each entry is exactly W's or exactly the
parent's — so keep: 1 gives W and keep: 0 the parent bit for bit, and a tensor whose whole Δ is
pruned is the parent's tensor: the same bytes, the same digest, nothing new stored.

`keep: f` keeps the k = ⌊f·n⌋ largest |Δ| of a tensor (scope tensor, n its element count) or
of the model (scope global, n every floating element; the threshold is found exactly with a
radix select over the float32 bit patterns, two streaming passes, one tensor in memory at a
time). Entries tied with the k-th largest are all kept (deterministic), and entries with
Δ = 0 are never counted as kept. `trim` is the reusable part (other merge operators call it).

What each pruned tensor keeps and how far it moves from W is collected while it is computed
(`prune_reports(executor)`): kept and changed entries, max and RMS deviation from W.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from ..dtypes import is_floating
from ..magnitudes import kth_largest
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..oracle import OracleContext
from ..tasks import F32, Target, Task

NAME = "consolidate.prune"
ROLE = "prune-parent"
SCOPES = ("tensor", "global")
_NOTES = "consolidate.prune"  # the executor notes key of the reports


# ---- the trim rule (plain torch; reusable) ---------------------------------------------------


def trim(delta: torch.Tensor, *, keep: float | None = None, threshold: float | None = None) -> torch.Tensor:
    """TIES' trim of a task vector Δ: the boolean mask of the entries that stay — the top
    ⌊keep·n⌋ by |Δ| (ties with the last one kept too), or those with |Δ| > threshold. Entries
    with Δ = 0 are never in the mask."""
    magnitude = delta.abs().float()
    if threshold is None:
        assert keep is not None, "give keep or threshold"
        count = math.floor(keep * magnitude.numel())
        return (magnitude >= kth_largest(lambda: [magnitude], count)) & (magnitude > 0)
    return magnitude > threshold


# ---- the operator ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Population:
    """Global scope: every pruned (value, parent) pair of one step and how many entries of
    the whole model to keep; compared by identity (one per step)."""

    pairs: tuple[tuple[Task, Task], ...]
    count: int


@dataclass(frozen=True)
class TrimReport:
    """What pruning did to one tensor."""

    elements: int
    changed: int  # entries where W differs from the parent
    kept: int  # entries that keep W's value
    max_deviation: float  # max |W′ − W|
    rms_deviation: float  # √mean (W′ − W)²

    @property
    def fully_pruned(self) -> bool:
        """Whether the result is the parent's tensor although W was not."""
        return self.changed > 0 and self.kept == 0


@dataclass(frozen=True)
class Trim(Task):
    """where(mask, value, parent) with mask = `trim` of value − parent; float32. The executor
    computes it through `evaluate` (an operator-defined task)."""

    name: str
    value: Task
    parent: Task
    threshold: float | None = None
    keep: float | None = None
    population: Population | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> str:
        return F32

    def inputs(self) -> tuple[Task, ...]:
        return (self.value, self.parent)

    def evaluate(self, inputs: list[torch.Tensor], executor: Any) -> torch.Tensor:
        """The trimmed tensor from float32 (value, parent); records its TrimReport."""
        value, parent = inputs
        delta = value - parent
        if self.population is not None:
            threshold = _global_threshold(self.population, executor, value.device)
            mask = (delta.abs() >= threshold) & (delta != 0)
        else:
            mask = trim(delta, keep=self.keep, threshold=self.threshold)
        deviation = torch.where(mask, 0.0, delta)
        empty = delta.numel() == 0
        executor.notes.setdefault(_NOTES, {})[self.name] = TrimReport(
            delta.numel(),
            int(torch.count_nonzero(delta)),
            int(torch.count_nonzero(mask)),
            0.0 if empty else float(deviation.abs().max()),
            0.0 if empty else math.sqrt(float(deviation.double().square().mean())),
        )
        return torch.where(mask, value, parent)


def _global_threshold(population: Population, executor: Any, device: torch.device) -> float:
    """The k-th largest |Δ| over the whole population, computed once per executor."""

    def magnitudes() -> Iterable[torch.Tensor]:
        for value, parent in population.pairs:
            computed = [executor.compute(Target(task, F32), device) for task in (value, parent)]
            yield (computed[0] - computed[1]).abs()

    cache = executor.notes.setdefault(f"{_NOTES}.threshold", {})
    if population not in cache:
        cache[population] = kth_largest(magnitudes, population.count)
    return float(cache[population])


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    """Every floating tensor that differs from the parent's becomes a `Trim`."""
    check_parameters(step, {"parent", "keep", "threshold", "scope"})
    parent_ref = step.get("parent")
    if not isinstance(parent_ref, str):
        raise PlanProblem(f"parent must be a ref, got {parent_ref!r}")
    keep, threshold = _rule(step)
    scope = step.get("scope", "tensor")
    if scope not in SCOPES:
        raise PlanProblem(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    parent = source.model(parent_ref, ROLE).tensors
    problems = [f"{parent_ref} lacks {n}" for n in sorted(state.tensors.keys() - parent.keys())[:3]]
    problems += [
        f"{n} is {list(t.shape)} here but {list(parent[n].shape)} in {parent_ref}"
        for n, t in state.tensors.items()
        if n in parent and t.shape != parent[n].shape
    ]
    if problems:
        raise PlanProblem(*problems)
    changed = {n: t for n, t in state.tensors.items() if is_floating(t.dtype) and t != parent[n]}
    population = None
    if scope == "global" and keep is not None:
        elements = sum(math.prod(t.shape) for t in state.tensors.values() if is_floating(t.dtype))
        population = Population(tuple((t, parent[n]) for n, t in changed.items()), math.floor(keep * elements))
        keep = None
    tensors = dict(state.tensors)
    for name, task in changed.items():
        tensors[name] = Trim(name, task, parent[name], threshold, keep, population)
    return ModelState(state.config, tensors)


def _rule(step: dict[str, Any]) -> tuple[float | None, float | None]:
    if ("keep" in step) == ("threshold" in step):
        raise PlanProblem("give either keep (a fraction) or threshold (|Δ| > τ)")
    key = "keep" if "keep" in step else "threshold"
    value = step[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PlanProblem(f"{key} must be a number ≥ 0, got {value!r}")
    if key == "keep" and value > 1:
        raise PlanProblem(f"keep is a fraction in [0, 1], got {value!r}")
    return (float(value), None) if key == "keep" else (None, float(value))


def prune_reports(executor: Any) -> dict[str, TrimReport]:
    """The reports of every pruned tensor this executor computed, by tensor name."""
    return dict(executor.notes.get(_NOTES, {}))


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's magnitude trim, done again with plain torch: per tensor (or over the whole
    model) the ⌊keep·n⌋ largest |Δ| by argsort, or |Δ| > threshold; W′ = where(mask, W, P).
    The parent is transformers' from_pretrained of the parent bank."""
    keep, threshold = _rule(step)
    parent = context.load_model(step["parent"]).state_dict()
    weights = {n: v for n, v in model.state_dict().items() if v.is_floating_point()}
    deltas = {n: (v.float() - parent[n].float()).reshape(-1) for n, v in weights.items()}
    if threshold is not None:
        masks = {n: d.abs() > threshold for n, d in deltas.items()}
    elif step.get("scope", "tensor") == "global" and keep is not None:
        flat = torch.cat(list(deltas.values()))
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[torch.argsort(flat.abs(), descending=True)[: math.floor(keep * flat.numel())]] = True
        masks = dict(zip(deltas, chosen.split([d.numel() for d in deltas.values()]), strict=True))
    else:
        assert keep is not None
        masks = {}
        for n, d in deltas.items():
            masks[n] = torch.zeros(d.numel(), dtype=torch.bool)
            masks[n][torch.argsort(d.abs(), descending=True)[: math.floor(keep * d.numel())]] = True
    trimmed = {n: torch.where(masks[n].reshape(v.shape), v, parent[n].to(v.dtype)) for n, v in weights.items()}
    model.load_state_dict(trimmed, strict=False)
    return model
