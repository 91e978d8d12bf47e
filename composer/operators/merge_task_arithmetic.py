"""`merge.task_arithmetic`: task arithmetic (Ilharco et al. 2023) — mergekit's `task_arithmetic`.

    - op: merge.task_arithmetic    # the composition's base is the base model
      models:
        - {bank: math@v1, weight: 0.7}
        - {bank: code@v1, weight: -0.3}   # negative weights subtract a task
      lambda: 1.0
      normalize: false             # divide by Σ weight (default off, as mergekit)

θ = θ₀ + λ · Σᵢ wᵢ (θᵢ − θ₀) (÷ Σᵢ wᵢ when `normalize`), per tensor, float32, rounded once.
mergekit accepts `density` and `rescale` here and ignores them; we refuse them (use merge.ties
or merge.dare to trim task vectors).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from ..merge_parameters import BOOL, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..task_vectors import plan_task_vectors
from ..tasks import Task
from .merge_ties import INT8_MASK, LAMBDA, WEIGHT

NAME = "merge.task_arithmetic"
METHOD = MergeMethod(
    NAME, "task_arithmetic", (WEIGHT, Parameter("normalize", BOOL, False), LAMBDA, INT8_MASK), needs_base=True
)


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    return plan_merge(state, step, source, METHOD, _task)


def _task(tensor: TensorMerge) -> Task:
    trims = [None] * len(tensor.others)
    return plan_task_vectors(
        tensor, trims, consensus=False, normalize=tensor.parameters["normalize"], scale=tensor.parameters["lambda"]
    )


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `task_arithmetic` on the exported models."""
    from ..mergekit_oracle import run_mergekit

    return run_mergekit(model, step, context, METHOD)
