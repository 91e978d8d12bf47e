"""Composer operators, by name.

Each operator is one module with
- `NAME`, the name steps use (`op: adapter.lora`);
- `apply(state, step, source) -> ModelState`: a pure function from the model description
  (config + one task per tensor) to the new description — no tensor data is touched;
- `oracle(model, step, context) -> model`: what the reference implementation (the peer:
  PEFT for adapters, the unchanged model for function-preserving growth) computes for the
  step, used by `weightbank verify`.
Adding an operator touches its own file and one line here.
"""

from __future__ import annotations

from typing import Any, Protocol

from transformers import PreTrainedModel

from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from . import (
    depth,
    ema,
    ffn,
    heads,
    hidden,
    lora,
    merge_dare,
    merge_linear,
    merge_model_stock,
    merge_passthrough,
    merge_slerp,
    merge_task_arithmetic,
    merge_ties,
    prune,
    rope,
    scaffold_attach,
    scaffold_fold,
)


class Operator(Protocol):
    NAME: str

    def apply(self, state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState: ...

    def oracle(self, model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel: ...


OPERATORS: dict[str, Operator] = {
    lora.NAME: lora,
    depth.NAME: depth,
    ffn.NAME: ffn,
    heads.NAME: heads,
    hidden.NAME: hidden,
    rope.NAME: rope,
    ema.NAME: ema,
    prune.NAME: prune,
    merge_linear.NAME: merge_linear,
    merge_task_arithmetic.NAME: merge_task_arithmetic,
    merge_ties.NAME: merge_ties,
    merge_dare.NAME: merge_dare,
    merge_slerp.NAME: merge_slerp,
    merge_passthrough.NAME: merge_passthrough,
    merge_model_stock.NAME: merge_model_stock,
    scaffold_fold.NAME: scaffold_fold,
    scaffold_attach.NAME: scaffold_attach,
}
