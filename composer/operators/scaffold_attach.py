"""`scaffold.attach`: keep a scaffold bank's seeds as runtime modules (the persist decision).

    - op: scaffold.attach
      bank: seed-7@v1
      alpha: 0.5        # optional, as for scaffold.fold (or `at: STEP`)

Every seed, of any kind (mlp and input-dependent routers too), wraps its host linear layer
in a `SeededLayer` computing the seed's formula at run time with its alpha (see
`composer/seed_modules.py`), so the unfolded model runs, can be fine-tuned further, and is
the reference `scaffold.fold` is verified against. The checkpoint tensors are unchanged; a
composition with attached seeds builds a model (`compose`), it cannot be written to a folder
or a bank. Its oracle attaches the same seeds to the peer-built model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel

from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..scaffolds import planned_seeds
from ..seed_modules import SeedAttachment, attach_from_store

NAME = "scaffold.attach"


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    """Plan the step's seeds as modules the build attaches."""
    attached = tuple(SeedAttachment(seed) for seed in planned_seeds(state, step, source))
    return dataclasses.replace(state, attachments=(*state.attachments, *attached))


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """The seeds attached to the peer-built model, tensors read from the store."""
    return attach_from_store(model, step, context)
