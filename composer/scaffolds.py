"""What `scaffold.fold` and `scaffold.attach` share: a step's scaffold bank read and checked
against the model being composed, each seed with the alpha it applies with, its host layer's
layout and its tensors as tasks.

    - op: scaffold.fold        # or scaffold.attach
      bank: seed-7@v1
      alpha: 0.5               # optional: every seed applies with this alpha (wins over the bank's)
      at: 400                  # optional: evaluate the seeds' schedules at this step instead
      check_host: true         # refuse a scaffold grafted onto another host (default)

Slots are checked against the model transformers builds from the current config (on the
meta device): a seed sits on an `nn.Linear` (weight (out, in)) or a `Conv1D` (weight
(in, out)); anything else — an embedding, a norm, a block — is refused with its class.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from weightbank.registry.banks import Bank
from weightbank.registry.errors import WeightbankError
from weightbank.registry.naming import with_article
from weightbank.registry.peft_adapter import lora_scale
from weightbank.registry.scaffolds import ScaffoldView, alpha_at, fold_blocker, shape_problems

from .hf_model import config_object, meta_model
from .model_state import BankSource, ModelState, PlanProblem, check_parameters, load
from .tasks import Load, Task

STEP_PARAMETERS = {"bank", "alpha", "at", "check_host"}


@dataclass(frozen=True)
class PlannedSeed:
    """A seed as a step applies it."""

    slot: str
    kind: str
    alpha: float
    layout: str  # "out_in" (nn.Linear) or "in_out" (Conv1D)
    tensors: dict[str, Load]  # role → the stored tensor
    options: dict[str, Any]
    blocker: str | None  # why it cannot fold (None: it can)
    weight_shape: tuple[int, ...]  # the host weight it was planned against

    @property
    def weight(self) -> str:
        return f"{self.slot}.weight"

    @property
    def bias(self) -> str:
        return f"{self.slot}.bias"

    @property
    def scale(self) -> float:
        """lora seeds: s = lora_alpha / r (or / √r with rsLoRA), PEFT's scaling."""
        return lora_scale(self.options["lora_alpha"], self.options["r"], self.options["use_rslora"])


def step_view(step: dict[str, Any], bank: Callable[[str], Bank]) -> tuple[ScaffoldView, float | None, int | None]:
    """The step's scaffold bank, looked up with `bank` (refused if pruned), and its `alpha` /
    `at` overrides."""
    check_parameters(step, STEP_PARAMETERS)
    ref = step.get("bank")
    if not isinstance(ref, str):
        raise PlanProblem("give the scaffold bank as 'bank: REF'")
    try:
        view = ScaffoldView(bank(ref), ref)
    except WeightbankError as exc:
        raise PlanProblem(str(exc)) from None
    decision = view.decision
    if decision is not None and decision["action"] == "prune":
        raise PlanProblem(f"{ref} was pruned: its seeds are dropped (name an earlier version to apply them anyway)")
    if not isinstance(step.get("check_host", True), bool):
        raise PlanProblem("check_host must be true or false")
    alpha, at = step.get("alpha"), step.get("at")
    if alpha is not None and at is not None:
        raise PlanProblem("give either alpha (a constant for every seed) or at (a step of their schedules), not both")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
        raise PlanProblem(f"alpha must be a number, got {alpha!r}")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int) or at < 0):
        raise PlanProblem(f"at must be a step number ≥ 0, got {at!r}")
    return view, None if alpha is None else float(alpha), at


def planned_seeds(state: ModelState, step: dict[str, Any], source: BankSource) -> list[PlannedSeed]:
    """Every seed of the step's bank, checked against `state` (all problems at once)."""
    view, alpha, at = step_view(step, lambda ref: source.bank(ref, "scaffold", "scaffold"))
    if step.get("check_host", True) and view.host != source.base.digest:
        raise PlanProblem(
            f"{view.ref} was grafted onto host {source.describe(view.host)}, not onto this composition's base "
            f"{source.describe(source.base.digest)} (set check_host: false to apply it anyway)"
        )
    problems: list[str] = []
    seeds = []
    for seed in view.seeds.values():
        layout, problem = _layout(state.config, seed.slot)
        weight = state.tensors.get(f"{seed.slot}.weight")
        if problem:
            problems.append(f"seed {seed.slot}: {problem}")
            continue
        if weight is None:
            problems.append(f"seed {seed.slot}: the model has no {seed.slot}.weight")
            continue
        misfits = shape_problems(seed.kind, seed.shapes, weight.shape, layout)
        if misfits:
            problems.append(f"seed {seed.slot}: {'; '.join(misfits)}")
            continue
        seeds.append(
            PlannedSeed(
                seed.slot, seed.kind, alpha if alpha is not None else alpha_at(seed.alpha, at), layout,
                {role: load(record) for role, record in seed.tensors.items()}, seed.options,
                fold_blocker(seed.kind, seed.shapes, f"{seed.slot}.bias" in state.tensors), weight.shape,
            )
        )  # fmt: skip
    if problems:
        raise PlanProblem(*problems)
    return seeds


def host_shape_problems(seed: PlannedSeed, tensors: dict[str, Task]) -> list[str]:
    """A seed planned against one host weight no longer fits if later steps reshaped it."""
    weight = tensors.get(seed.weight)
    if weight is not None and weight.shape == seed.weight_shape:
        return []
    now = list(weight.shape) if weight is not None else "gone"
    return [f"seed {seed.slot} was attached to a {list(seed.weight_shape)} weight, but the composed model's is {now}"]


def _layout(config: dict[str, Any], slot: str) -> tuple[str, str]:
    """(`out_in` or `in_out`, "") for a linear layer; ("", why not) for anything else."""
    try:
        module = _meta_model(json.dumps(config, sort_keys=True)).get_submodule(slot)
    except AttributeError:
        return "", f"the model has no module {slot}"
    except WeightbankError as exc:
        return "", str(exc)
    if isinstance(module, Conv1D):
        return "in_out", ""
    if isinstance(module, nn.Linear):
        return "out_in", ""
    return "", (
        f"{slot} is {with_article(type(module).__name__)} layer, not a linear layer (nn.Linear or Conv1D): "
        "seeds fold into and attach around linear layers"
    )


@lru_cache(maxsize=4)
def _meta_model(config_json: str) -> nn.Module:
    """The model transformers builds from a config, on the meta device (no memory)."""
    return meta_model(config_object(json.loads(config_json)), torch.float32)
