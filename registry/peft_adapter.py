"""PEFT LoRA adapters as saved by `PeftModel.save_pretrained`: key layout and fit checks.

Saved keys are `base_model.model.<module path>.<part>`, the adapter name stripped:
- `lora_A.weight` (r, in), `lora_B.weight` (out, r), `lora_B.bias` (out,) with `lora_bias`;
- `lora_embedding_A` (r, num_embeddings), `lora_embedding_B` (embedding_dim, r);
- `lora_magnitude_vector` (out,) with DoRA;
- `<module>.base_layer.<param>`: the base layer's own tensor, saved with embedding layers
  (on a tied model it is the tensor the embedding and the head share);
- plain `<path>`: a `modules_to_save` copy, the module's own trained tensor (PEFT gives the
  module its own copy, so on a tied model it unties that module from its partner).
A base with `tie_word_embeddings` stores no `lm_head.weight`: transformers builds the output
head from the input embedding, so an adapter on `lm_head` adapts that tensor.
GPT-2's Conv1D stores weights as (in, out): PEFT marks those adapters `fan_in_fan_out`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InputError

KEY_PREFIX = "base_model.model."
OUTPUT_HEAD = "lm_head.weight"  # transformers' name for every causal LM's output embedding
# PEFT features whose merged weights cannot be reproduced exactly: refused with the reason.
_UNSUPPORTED_FEATURES = {
    "layer_replication": "it shares layers between positions, which a merged state dict cannot express",
    "target_parameters": "LoRA on raw nn.Parameters is not supported",
    "trainable_token_indices": "trainable-token deltas are not supported",
    "alora_invocation_tokens": "activated LoRA depends on the input, so it cannot be merged",
    "use_qalora": "QA-LoRA is not supported",
    "use_bdlora": "BD-LoRA is not supported",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
    "arrow_config": "Arrow routing is input-dependent, so it cannot be merged",
    "lora_ga_config": "LoRA-GA rewrites the base weights at initialisation",
    "kasa_config": "KaSA is not supported",
    "velora_config": "VeLoRA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
}
# Initialisations that rewrote the base weights during training (the adapter only fits that base).
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
LORA_PARTS = {
    "lora_A.weight": "lora_A",
    "lora_B.weight": "lora_B",
    "lora_B.bias": "lora_B_bias",
    "lora_embedding_A": "lora_embedding_A",
    "lora_embedding_B": "lora_embedding_B",
    "lora_magnitude_vector": "magnitude",
    "lora_magnitude_vector.weight": "magnitude",
}


@dataclass(frozen=True)
class AdapterKey:
    """What one saved adapter tensor is: a LoRA part of `module`, or a replacement of `target`."""

    key: str
    module: str
    part: str  # lora_A, lora_B, lora_B_bias, lora_embedding_A, lora_embedding_B, magnitude, base_layer, replace
    target: str  # the base tensor it applies to


def classify_key(key: str) -> AdapterKey:
    """Parse one key of an adapter_model.safetensors. `replace` and `base_layer` parts are
    whole tensors; the others are LoRA parts of `module`."""
    if not key.startswith(KEY_PREFIX):
        raise InputError(f"adapter tensor {key!r} does not start with {KEY_PREFIX!r}: not a PEFT adapter key")
    path = key[len(KEY_PREFIX) :]
    for suffix, part in LORA_PARTS.items():
        if path.endswith("." + suffix):
            module = path[: -len(suffix) - 1]
            return AdapterKey(key, module, part, f"{module}.weight")
    if ".base_layer." in path:
        module, _, param = path.rpartition(".base_layer.")
        return AdapterKey(key, module, "base_layer", f"{module}.{param}")
    module = path.rpartition(".")[0]
    return AdapterKey(key, module, "replace", path)


def merge_blockers(peft_config: Mapping[str, Any], ref: str) -> list[str]:
    """Why an adapter's merge would not match what PEFT computes (empty if it would)."""
    problems = [
        f"{ref}: PEFT option {key} is set; {reason}"
        for key, reason in _UNSUPPORTED_FEATURES.items()
        if peft_config.get(key) not in (None, False, {}, [], "")
    ]
    init = peft_config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        problems.append(
            f"{ref}: init_lora_weights={init!r} rewrote the base weights during training; convert the adapter "
            "with PEFT (path_initial_model_for_weight_conversion) before merging it into the original base"
        )
    return problems


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """PEFT's get_pattern_key: the value of the first pattern matching the end of the module path."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def module_rank_and_alpha(peft_config: Mapping[str, Any], module: str) -> tuple[Any, Any]:
    """(r, lora_alpha) of one adapted module, `rank_pattern` / `alpha_pattern` applied as PEFT does."""
    rank = pattern_value(peft_config.get("rank_pattern") or {}, module, peft_config.get("r"))
    alpha = pattern_value(peft_config.get("alpha_pattern") or {}, module, peft_config.get("lora_alpha", 8))
    return rank, alpha


def lora_scale(lora_alpha: float, rank: int, use_rslora: bool) -> float:
    """PEFT's scaling of B·A: lora_alpha / r, or lora_alpha / √r with rsLoRA."""
    return lora_alpha / math.sqrt(rank) if use_rslora else lora_alpha / rank


def check_lora_config(peft_config: Mapping[str, Any], source: str) -> None:
    """Only LoRA adapters are adapter banks."""
    peft_type = peft_config.get("peft_type")
    if peft_type != "LORA":
        raise InputError(f"{source}: peft_type {peft_type!r} is not supported; adapter banks hold LoRA adapters")
    if not isinstance(peft_config.get("r"), int) or peft_config["r"] < 1:
        raise InputError(f"{source}: adapter_config.json has no valid rank 'r'")


def with_tied_head(base: Mapping[str, tuple[int, ...]], config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The base's tensor shapes plus, for a base with tied embeddings, the output head it does
    not store: `lm_head.weight` is then the input embedding (the one 2-D shape with vocab_size
    rows), which adapters on `lm_head` and `ensure_weight_tying` adapters address."""
    shapes = dict(base)
    if config.get("tie_word_embeddings") and OUTPUT_HEAD not in shapes:
        embeddings = {s for s in shapes.values() if len(s) == 2 and s[0] == config.get("vocab_size")}
        if len(embeddings) == 1:
            shapes[OUTPUT_HEAD] = embeddings.pop()
    return shapes


def check_fits_base(
    adapter: Mapping[str, tuple[int, ...]],
    base: Mapping[str, tuple[int, ...]],
    peft_config: Mapping[str, Any],
    base_label: str,
) -> None:
    """Every adapted module must exist in the base with shapes the LoRA factors agree with.

    `adapter` and `base` map tensor names to shapes. Raises InputError listing every misfit.
    """
    transposed = bool(peft_config.get("fan_in_fan_out"))
    problems: list[str] = []
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in adapter.items():
        info = classify_key(key)
        if info.target not in base:
            problems.append(f"{info.key} needs {info.target}, which {base_label} does not have")
        elif info.part in ("replace", "base_layer"):
            if tuple(base[info.target]) != tuple(shape):
                problems.append(f"{info.key} has shape {list(shape)} but {info.target} is {list(base[info.target])}")
        else:
            parts.setdefault(info.module, {})[info.part] = tuple(shape)
    for module, found in parts.items():
        weight = f"{module}.weight"
        if weight not in base:
            continue
        problems.extend(_factor_misfits(module, found, tuple(base[weight]), transposed))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InputError(f"adapter does not fit {base_label}: {'; '.join(problems[:3])}{more}")


def _factor_misfits(
    module: str, found: Mapping[str, tuple[int, ...]], weight: tuple[int, ...], transposed: bool
) -> list[str]:
    if len(weight) != 2:
        return [f"{module}.weight has shape {list(weight)}; LoRA needs a 2-D weight"]
    if "lora_embedding_A" in found or "lora_embedding_B" in found:
        num, dim = weight
        want = {"lora_embedding_A": (None, num), "lora_embedding_B": (dim, None)}
    else:
        out_features, in_features = (weight[1], weight[0]) if transposed else weight
        want = {"lora_A": (None, in_features), "lora_B": (out_features, None)}
    problems = []
    ranks = set()
    for part, (rows, cols) in want.items():
        shape = found.get(part)
        if shape is None:
            problems.append(f"{module} has no {part}")
            continue
        if len(shape) != 2 or (rows is not None and shape[0] != rows) or (cols is not None and shape[1] != cols):
            problems.append(f"{module}.{part} has shape {list(shape)}, which does not fit weight {list(weight)}")
            continue
        ranks.add(shape[1] if rows is not None else shape[0])
    if len(ranks) > 1:
        problems.append(f"{module}: lora_A and lora_B disagree on the rank ({sorted(ranks)})")
    out_dim = weight[1] if (transposed or "lora_embedding_A" in found) else weight[0]
    for part in ("lora_B_bias", "magnitude"):
        if part in found and found[part] != (out_dim,):
            problems.append(f"{module}.{part} has shape {list(found[part])}, expected [{out_dim}]")
    return problems
