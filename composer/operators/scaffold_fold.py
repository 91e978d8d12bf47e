"""`scaffold.fold`: fold a scaffold bank's seeds into the host weights, exactly.

    - op: scaffold.fold
      bank: seed-7@v1
      alpha: 0.5        # optional, wins over the bank's alphas; or `at: STEP` for their schedules
      check_host: true  # refuse a scaffold grafted onto another host (default)

Per seed, W the slot's weight in nn.Linear's layout (out, in), b its bias (GROWTH.md):
    delta   W + αΔW,              b + αΔb
    blend   (1 − α)W + αS,        (1 − α)b + αs
    lora    W + α·s·BA            (s = lora_alpha / r, or / √r with rsLoRA)
    input   W(I + αL),            b + αWc
    output  (I + αL)W,            b + α(Lb + c)
    router  (1 − α)W + αΣₖgₖWₖ,   (1 − α)b + αΣₖgₖbₖ   (input-independent gates only)
A Conv1D host stores Wᵀ, and gets the transpose of each. Every result is a lazy task
computed in float32 and rounded once to the target dtype. `mlp` seeds and routers with an
input-dependent gate are refused with the reason: keep them with `scaffold.attach`.
The oracle is the same step as `scaffold.attach` (the unfolded blend); lora seeds are also
compared with PEFT's `merge_and_unload` at scale α·s (`peer_oracle`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel

from ..model_state import BankSource, ModelState, PlanProblem
from ..oracle import OracleContext
from ..scaffold_peft import peft_merge
from ..scaffolds import PlannedSeed, planned_seeds
from ..seed_modules import attach_from_store
from ..tasks import Add, LowRankTerm, LowRankUpdate, MatMul, Scale, Task, Transpose

NAME = "scaffold.fold"


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    """Plan the fold of every seed of the step's scaffold bank into `state`."""
    seeds = planned_seeds(state, step, source)
    blocked = [
        f"seed {seed.slot} ({seed.kind}) cannot fold: {seed.blocker}; keep it as a runtime module with "
        "op: scaffold.attach"
        for seed in seeds
        if seed.blocker
    ]
    if blocked:
        raise PlanProblem(*blocked)
    tensors = dict(state.tensors)
    for seed in seeds:
        tensors.update(fold(seed, tensors))
    return dataclasses.replace(state, tensors=tensors)


def fold(seed: PlannedSeed, tensors: dict[str, Task]) -> dict[str, Task]:
    """The slot's new weight (and bias) tasks."""
    weight, bias, alpha, seeds = tensors[seed.weight], tensors.get(seed.bias), seed.alpha, seed.tensors
    conv1d = seed.layout == "in_out"

    def stored(matrix: Task) -> Task:  # a seed matrix in the host's storage layout
        return Transpose(matrix) if conv1d else matrix

    def seed_bias(role: str, factor: float) -> list[tuple[Task, float]]:
        return [(seeds[role], factor)] if role in seeds else []

    folded: dict[str, Task] = {}
    kind = seed.kind
    if kind in ("delta", "blend"):
        keep = 1.0 if kind == "delta" else 1.0 - alpha
        folded[seed.weight] = weighted_sum([(weight, keep), (stored(seeds[f"{kind}.weight"]), alpha)])
        if bias is not None:
            folded[seed.bias] = weighted_sum([(bias, keep), *seed_bias(f"{kind}.bias", alpha)])
    elif kind == "lora":
        term = LowRankTerm(seeds["lora_B.weight"], seeds["lora_A.weight"], alpha * seed.scale, conv1d)
        folded[seed.weight] = _updated(weight, term)
    elif kind == "input":
        square = seeds["input.weight"]  # W(I + αL): in storage, Wᵀ + αLᵀWᵀ for Conv1D
        term = LowRankTerm(Transpose(square), weight, alpha) if conv1d else LowRankTerm(weight, square, alpha)
        folded[seed.weight] = _updated(weight, term)
        if "input.bias" in seeds:
            c = seeds["input.bias"]
            assert bias is not None  # fold_blocker refuses a seed bias on a host without one
            folded[seed.bias] = weighted_sum([(bias, 1.0), (MatMul(c, weight) if conv1d else MatMul(weight, c), alpha)])
    elif kind == "output":
        square = seeds["output.weight"]  # (I + αL)W: in storage, Wᵀ + αWᵀLᵀ for Conv1D
        term = LowRankTerm(weight, Transpose(square), alpha) if conv1d else LowRankTerm(square, weight, alpha)
        folded[seed.weight] = _updated(weight, term)
        if bias is not None:
            parts = [(bias, 1.0), (MatMul(square, bias), alpha), *seed_bias("output.bias", alpha)]
            folded[seed.bias] = weighted_sum(parts)
    elif kind == "router":
        gates = seed.options["gates"]
        experts = [(stored(seeds[f"experts.{k}.weight"]), alpha * g) for k, g in enumerate(gates)]
        folded[seed.weight] = weighted_sum([(weight, 1.0 - alpha), *experts])
        if bias is not None:
            expert_biases = [part for k, g in enumerate(gates) for part in seed_bias(f"experts.{k}.bias", alpha * g)]
            folded[seed.bias] = weighted_sum([(bias, 1.0 - alpha), *expert_biases])
    else:
        raise PlanProblem(f"seed {seed.slot}: {kind} seeds do not fold")
    return folded


def weighted_sum(parts: list[tuple[Task, float]]) -> Task:
    """Σ factorᵢ·taskᵢ as Add / Scale tasks; terms with factor 0 are left out, factors of 1
    are not multiplied."""
    kept = [(task, factor) for task, factor in parts if factor != 0] or [(parts[0][0], 0.0)]
    scaled = [task if factor == 1 else Scale(task, factor) for task, factor in kept]
    total = scaled[0]
    for task in scaled[1:]:
        total = Add(total, task)
    return total


def _updated(weight: Task, term: LowRankTerm) -> LowRankUpdate:
    """weight + term, joining the terms of an update already planned (e.g. an adapter.lora step)."""
    if isinstance(weight, LowRankUpdate):
        return LowRankUpdate(weight.base, (*weight.terms, term))
    return LowRankUpdate(weight, (term,))


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """The same seeds attached as runtime modules (what `scaffold.attach` builds)."""
    return attach_from_store(model, step, context)


def peer_oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> tuple[str, Any] | None:
    """For a scaffold of lora seeds only: PEFT's own merge_and_unload at scale α·s."""
    return peft_merge(model, step, context)
