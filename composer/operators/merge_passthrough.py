"""`merge.passthrough`: layer slices of several models stacked into one — mergekit's `passthrough`
(frankenmerges, SOLAR-style depth up-scaling).

    - op: merge.passthrough        # the composition's base gives the config (num_hidden_layers,
      slices:                      # layer_types follow the slices)
        - sources: [{bank: a@v1, layers: [0, 24]}]
        - sources: [{bank: b@v1, layers: [8, 32]}]
        - sources: [{bank: a@v1, layers: [24, 32], scale: 0.5}]   # optional factor per source

Output layer j is the j-th layer of the concatenated slices, copied as it is (or × `scale`);
embeddings come from the first slice's model, the final norm and head from the last slice's.
Nothing is computed for unscaled tensors: they are the stored objects, re-used by digest.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from ..merge_parameters import NUMBER, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..tasks import Scale, Task

NAME = "merge.passthrough"
METHOD = MergeMethod(
    NAME, "passthrough", (Parameter("scale", NUMBER, None, per_model=True, on_base=True),), max_inputs=1
)


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    return plan_merge(state, step, source, METHOD, _task)


def _task(tensor: TensorMerge) -> Task:
    (only,) = tensor.contributions
    scale = only.parameters["scale"]
    return only.task if scale is None else Scale(only.task, float(scale))


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `passthrough` on the exported models."""
    from ..mergekit_oracle import run_mergekit

    return run_mergekit(model, step, context, METHOD)
