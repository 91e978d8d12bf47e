"""`consolidate.ema`: the exponential moving average of a bank's versions (SleepTime's EMA).

    - op: consolidate.ema
      bank: my-model            # a ref name: its versions are averaged
      versions: "3..7"          # or [3, 5, 7]; in the order given
      decay: 0.9                # m ← W_first, then m ← β·m + (1 − β)·W_v for each later version
      # weights: [1, 1, 2]      # …or an explicit weighted average (normalised to sum 1)

Per tensor, the average of that tensor across the chosen versions, computed in float32 and
rounded once to the target dtype. The EMA is the weighted sum with w_first = β^(n−1) and
w_k = (1 − β)·β^(n−k); versions holding the same tensor (same digest, or for expansions the
same recipe expression) share one term, and a tensor that is the same in every version is
loaded as it is — same digest, nothing computed.

- base versions: each version's stored tensors;
- expansion versions: each version's full tensors, i.e. the recipe applied to the base with
  that version's trained tensors in place;
- adapter versions: the merged deltas are averaged, W + Σ wᵢ·sᵢ·BᵢAᵢ (never the A and B
  factors separately: the product of averages is not the average of products), applied to
  the model the step sees, with adapter.lora's PEFT semantics.

Base and expansion versions replace the model's tensors (names and shapes must match); the
config is the composition's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedModel

from weightbank.registry.banks import Bank
from weightbank.registry.errors import InputError, WeightbankError
from weightbank.registry.version_sets import version_refs

from ..dtypes import is_floating
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..oracle import OracleContext
from ..tasks import Add, Scale, Task
from . import lora

NAME = "consolidate.ema"
ROLE = "ema"


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    """The model with every tensor replaced by its average over the versions."""
    refs, weights = versions_and_weights(step)
    banks = _banks(refs, source)
    kinds = {bank.type for bank in banks}
    if len(kinds) > 1:
        raise PlanProblem(f"the versions of {step['bank']} are of different bank types: {', '.join(sorted(kinds))}")
    if kinds == {"adapter"}:
        adapters = [{"bank": ref, "weight": weight} for ref, weight in zip(refs, weights, strict=True)]
        return lora.apply(state, {"op": lora.NAME, "adapters": adapters}, source)
    if not kinds <= {"base", "expansion"}:
        raise PlanProblem(f"{step['bank']} is a {kinds.pop()} bank: EMA averages base, expansion or adapter versions")
    models = [source.model(ref, ROLE).tensors for ref in refs]
    problems = [p for ref, tensors in zip(refs, models, strict=True) for p in _mismatches(state.tensors, tensors, ref)]
    tensors: dict[str, Task] = {}
    for name in state.tensors:
        try:
            tensors[name] = weighted_sum([model[name] for model in models], weights)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise PlanProblem(*problems)
    return ModelState(state.config, tensors)


def versions_and_weights(step: dict[str, Any]) -> tuple[list[str], list[float]]:
    """The version refs (`NAME@vN`, in order) and the weight of each."""
    check_parameters(step, {"bank", "versions", "decay", "weights"})
    try:
        refs = version_refs(step.get("bank"), step.get("versions"))
    except InputError as exc:
        raise PlanProblem(str(exc)) from None
    if ("decay" in step) == ("weights" in step):
        raise PlanProblem("give either decay (EMA) or weights (a weighted average)")
    if "decay" in step:
        return refs, ema_weights(_number(step["decay"], "decay"), len(refs))
    weights = step["weights"]
    if not isinstance(weights, list) or len(weights) != len(refs):
        raise PlanProblem(f"weights must list one number per version ({len(refs)}), got {weights!r}")
    values = [_number(w, "each weight") for w in weights]
    if min(values) < 0 or sum(values) <= 0:
        raise PlanProblem(f"weights must be ≥ 0 with a positive sum, got {weights!r}")
    return refs, [w / sum(values) for w in values]


def ema_weights(decay: float, count: int) -> list[float]:
    """The weight of each of `count` versions in m ← W₁, m ← β·m + (1 − β)·W_v."""
    if not 0 <= decay <= 1:
        raise PlanProblem(f"decay must be in [0, 1], got {decay!r}")
    return [decay ** (count - 1)] + [(1 - decay) * decay ** (count - k) for k in range(2, count + 1)]


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanProblem(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _banks(refs: list[str], source: BankSource) -> list[Bank]:
    banks, problems = [], []
    for ref in refs:
        try:
            banks.append(source.bank(ref, ROLE))
        except PlanProblem as exc:
            problems.extend(exc.problems)
    if problems:
        raise PlanProblem(*problems)
    return banks


def _mismatches(model: dict[str, Task], version: dict[str, Task], ref: str) -> list[str]:
    missing = sorted(model.keys() - version.keys())[:3]
    extra = sorted(version.keys() - model.keys())[:3]
    shapes = sorted(n for n in model.keys() & version.keys() if model[n].shape != version[n].shape)[:3]
    problems = [f"{ref} lacks {', '.join(missing)}"] if missing else []
    problems += [f"{ref} has tensors the model lacks: {', '.join(extra)}"] if extra else []
    problems += [f"{ref}: {n} is {list(version[n].shape)}, the model has {list(model[n].shape)}" for n in shapes]
    return problems


def weighted_sum(tasks: list[Task], weights: list[float]) -> Task:
    """Σ wᵢ·tasksᵢ (weights summing to 1) in float32, equal tasks merged into one term; a task
    that is every term with a non-zero weight is returned as it is. ValueError for integer
    tensors that differ."""
    terms: dict[Task, float] = {}
    for task, weight in zip(tasks, weights, strict=True):
        terms[task] = terms.get(task, 0.0) + weight
    terms = {task: weight for task, weight in terms.items() if weight != 0}
    if len(terms) == 1:
        return next(iter(terms))
    if not all(is_floating(task.dtype) for task in terms):
        raise ValueError("an integer tensor differs between versions and cannot be averaged")
    scaled = [Scale(task, weight) for task, weight in terms.items()]
    total: Task = scaled[0]
    for term in scaled[1:]:
        total = Add(total, term)
    return total


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """The peers' average: base versions loaded by transformers' from_pretrained and their
    parameters averaged with torch in float32; adapter versions merged by PEFT, each with its
    weight (adapter.lora's oracle)."""
    refs, weights = versions_and_weights(step)
    banks = [context.store.bank(ref) for ref in refs]
    if banks[0].type == "adapter":
        adapters = [{"bank": ref, "weight": weight} for ref, weight in zip(refs, weights, strict=True)]
        return lora.oracle(model, {"adapters": adapters}, context)
    if banks[0].type != "base":
        raise InputError(
            f"verify has no peer oracle for an EMA of {banks[0].type} versions (their full tensors exist only "
            "through the composer); verify each version instead"
        )
    state = {
        name: torch.zeros_like(value, dtype=torch.float32)
        for name, value in model.state_dict().items()
        if value.is_floating_point()
    }
    for ref, weight in zip(refs, weights, strict=True):
        try:
            version = context.load_model(ref).state_dict()
        except WeightbankError as exc:
            raise InputError(f"verify: {exc}") from None
        for name, value in state.items():
            value.add_(version[name].float() * weight)
    model.load_state_dict({name: value.to(model.dtype) for name, value in state.items()}, strict=False)
    return model
