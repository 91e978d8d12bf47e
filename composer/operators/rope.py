"""`context.rope`: scale RoPE for a longer context — a config edit, no tensor changes.

    - op: context.rope
      type: yarn                  # linear | dynamic | yarn | longrope | llama3
      factor: 4.0
      original_max_position_embeddings: 4096   # default: the config's current maximum
      # beta_fast / beta_slow / attention_factor / mscale / mscale_all_dim / truncate (yarn),
      # short_factor / long_factor (longrope, head_dim/2 numbers each),
      # low_freq_factor / high_freq_factor (llama3), rope_theta; max_position_embeddings

The step writes transformers 5 `rope_parameters` (`rope_type` plus the type's own keys, the
model's `rope_theta` kept) and raises `max_position_embeddings` to original × factor for
linear, yarn, longrope and llama3. `dynamic` leaves it alone: transformers' dynamic NTK reads
`max_position_embeddings` as the original length and rescales beyond it at run time.
transformers' own validation (`validate_rope`) judges the parameters; what it rejects —
with an error or, for many checks, only a logged warning — is refused. Models with learned
positions (GPT-2) are refused: they have no rotation to rescale.

Only dynamic leaves the model's outputs unchanged within the original length; `verify`
measures each type's effect against the unscaled model instead of calling it lossless.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import PreTrainedModel
from transformers.modeling_rope_utils import RopeParameters

from weightbank.registry.errors import WeightbankError

from ..architectures import FAMILIES
from ..hf_model import config_object, meta_model
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..oracle import OracleContext, Probe

NAME = "context.rope"
TYPES = ("linear", "dynamic", "yarn", "longrope", "llama3")
_LENGTH_RAISED = ("linear", "yarn", "longrope", "llama3")
_WITH_ORIGINAL = ("yarn", "longrope", "llama3")  # types whose rope_parameters hold the original length
# Keys a step may set in rope_parameters: transformers' own list, less the ones that are not a
# context-scaling choice (the type is `type:`, partial rotation and M-RoPE are the model's).
ROPE_KEYS = frozenset(RopeParameters.__annotations__) - {"rope_type", "partial_rotary_factor", "mrope_section"}
_LEARNED = {t for family in FAMILIES.values() if family.positions != "rope" for t in family.model_types}
_ROPE_LOGGER = "transformers.modeling_rope_utils"
# Beyond the original length, the long input runs this many tokens further.
LONG_EXTRA = 32
SHORT_MAX = 256


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    """The same tensors under a config with scaled RoPE."""
    return ModelState(scaled_config(state.config, step), state.tensors)


def scaled_config(config: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """`config` with the step's `rope_parameters` and maximum length, validated by transformers."""
    check_parameters(step, {"type", "max_position_embeddings", *ROPE_KEYS})
    rope_type = step.get("type")
    if rope_type not in TYPES:
        raise PlanProblem(f"type must be one of {', '.join(TYPES)}, got {rope_type!r}")
    if config.get("model_type") in _LEARNED:
        raise PlanProblem(
            f"{config['model_type']} has learned positions, which cannot be extended without training "
            "(context.rope needs a RoPE model)"
        )
    current = _rope_parameters(config)
    original = original_length(config, current, step)
    if isinstance(original, bool) or not isinstance(original, int) or original < 1:
        raise PlanProblem(f"original_max_position_embeddings must be a positive integer, got {original!r}")
    parameters: dict[str, Any] = {k: current[k] for k in ("rope_theta", "partial_rotary_factor") if k in current}
    parameters["rope_type"] = rope_type
    if rope_type in _WITH_ORIGINAL:
        parameters["original_max_position_embeddings"] = original
    parameters.update({key: copy.deepcopy(value) for key, value in step.items() if key in ROPE_KEYS})
    scaled = {key: value for key, value in config.items() if key != "rope_scaling"}  # the 4.x spelling
    scaled["rope_parameters"] = parameters
    scaled["max_position_embeddings"] = _max_length(config, step, rope_type, original)
    _validate(scaled, rope_type)
    return scaled


def _rope_parameters(config: dict[str, Any]) -> dict[str, Any]:
    """The model's RoPE parameters as transformers reads them (a 4.x `rope_theta` /
    `rope_scaling` config is standardised the same way)."""
    try:
        current = getattr(config_object(config), "rope_parameters", None)
    except WeightbankError as exc:
        raise PlanProblem(str(exc)) from None
    if not isinstance(current, dict) or "rope_theta" not in current:
        raise PlanProblem(f"{config.get('model_type')} has no single set of rope_parameters with a rope_theta to scale")
    return current


def original_length(config: dict[str, Any], current: dict[str, Any], step: dict[str, Any]) -> Any:
    """The pre-training length being extended: the step's, else the one the model's RoPE
    scaling already records, else its max_position_embeddings."""
    recorded = current.get("original_max_position_embeddings")
    return step.get("original_max_position_embeddings") or recorded or config.get("max_position_embeddings")


def _max_length(config: dict[str, Any], step: dict[str, Any], rope_type: str, original: int) -> int:
    given = step.get("max_position_embeddings")
    if rope_type == "dynamic":
        if given is not None:
            raise PlanProblem(
                "dynamic keeps max_position_embeddings: transformers reads it as the original length and "
                "rescales beyond it at run time"
            )
        return int(config["max_position_embeddings"])
    if given is not None:
        if isinstance(given, bool) or not isinstance(given, int) or given < original:
            raise PlanProblem(f"max_position_embeddings must be an integer ≥ {original}, got {given!r}")
        return given
    factor = step.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
        raise PlanProblem(f"{rope_type} needs factor: a number ≥ 1, got {factor!r}")
    return max(original, round(original * factor))


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


@contextmanager
def _rope_warnings() -> Iterator[list[str]]:
    """What transformers' RoPE validation logs as warnings, captured instead of printed
    (whatever the transformers verbosity)."""
    logger = logging.getLogger(_ROPE_LOGGER)
    handler = _Collect()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _validate(config: dict[str, Any], rope_type: str) -> None:
    """transformers' `validate_rope` on the new config: errors and warnings both refuse."""
    with _rope_warnings() as warnings:
        try:
            config_object(config).validate_rope()
        except (WeightbankError, KeyError, ValueError, TypeError) as exc:
            reason = str(exc).split(": ", 1)[-1] if isinstance(exc, WeightbankError) else str(exc.args[0])
            raise PlanProblem(f"transformers rejects these {rope_type} rope_parameters: {reason}") from None
    if warnings:  # transformers validates twice (config init, validate_rope): say each once
        reasons = "; ".join(dict.fromkeys(warnings))
        raise PlanProblem(f"transformers rejects these {rope_type} rope_parameters: {reasons}")


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """transformers' own model class built from the scaled config, holding the same weights."""
    scaled = meta_model(config_object(scaled_config(model.config.to_dict(), step)), model.dtype)
    scaled.load_state_dict(model.state_dict(), assign=True)
    scaled.tie_weights()
    return scaled.eval()


def probes(step: dict[str, Any], config: dict[str, Any]) -> list[Probe]:
    """What `verify` measures against the unscaled model: an input within the original length
    (dynamic must leave it unchanged, the others are only measured) and one beyond it."""
    original = original_length(config, config.get("rope_parameters") or {}, step)
    inside = min(original, SHORT_MAX)
    label = f"context.rope {step['type']}"
    return [
        Probe(label, inside, f"within the original {original}", 1e-5 if step["type"] == "dynamic" else None),
        Probe(label, original + LONG_EXTRA, f"beyond the original {original}", None),
    ]
