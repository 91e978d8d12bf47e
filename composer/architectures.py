"""Architecture knowledge as data: where each family keeps its tensors and config values.

A `Family` is a table — config key names, tensor name templates by role, traits — and
`Layout` answers the questions operators ask ("the q projection of layer 3", "which axis
of this weight is its output?") from it. Growth operators are written against roles, not
names, so a new family is a new table row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from weightbank.registry.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Family:
    """One architecture family. `tensors` maps roles to name templates; `{i}` is a layer."""

    name: str
    model_types: tuple[str, ...]
    config: dict[str, str]  # role -> config key
    tensors: dict[str, str]  # role -> module path (layer roles relative to `layer`)
    norm: str  # "RMSNorm" | "LayerNorm"
    placement: str = "pre"  # norm placement: "pre" | "post"
    mlp: str = "swiglu"
    positions: str = "rope"
    conv1d: bool = False  # GPT-2's Conv1D stores (in, out)
    unit_offset_norm: bool = False  # Gemma: x·(1 + w)
    embedding_scale: bool = False  # Gemma multiplies embeddings by √hidden
    tied_default: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)  # config values when the key is absent

    @property
    def has_kv_heads(self) -> bool:
        """Whether the config counts KV heads (and head_dim) apart from the query heads."""
        return "kv_heads" in self.config


_LLAMA_LAYER = {
    "layer": "model.layers.{i}",
    "q": "self_attn.q_proj",
    "k": "self_attn.k_proj",
    "v": "self_attn.v_proj",
    "o": "self_attn.o_proj",
    "gate": "mlp.gate_proj",
    "up": "mlp.up_proj",
    "down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "mlp_norm": "post_attention_layernorm",
    "embed": "model.embed_tokens",
    "final_norm": "model.norm",
    "lm_head": "lm_head",
}
_LLAMA_CONFIG = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "intermediate": "intermediate_size",
    "vocab": "vocab_size",
    "eps": "rms_norm_eps",
    "tied": "tie_word_embeddings",
    "qkv_bias": "attention_bias",
    "o_bias": "attention_bias",
    "mlp_bias": "mlp_bias",
}

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", ("llama", "mistral"), _LLAMA_CONFIG, _LLAMA_LAYER, "RMSNorm"),
    "qwen2": Family(
        "qwen2", ("qwen2",), {**_LLAMA_CONFIG, "qkv_bias": "", "o_bias": "", "mlp_bias": ""}, _LLAMA_LAYER, "RMSNorm",
        defaults={"qkv_bias": True, "o_bias": False, "mlp_bias": False},
    ),
    "qwen3": Family(
        "qwen3", ("qwen3",), {**_LLAMA_CONFIG, "mlp_bias": ""},
        {**_LLAMA_LAYER, "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}, "RMSNorm",
        defaults={"mlp_bias": False},
    ),
    "gemma": Family(
        "gemma", ("gemma",), {**_LLAMA_CONFIG, "mlp_bias": ""}, _LLAMA_LAYER, "RMSNorm", mlp="geglu",
        unit_offset_norm=True, embedding_scale=True, tied_default=True, defaults={"mlp_bias": False},
    ),
    "gpt2": Family(
        "gpt2", ("gpt2",),
        {"layers": "n_layer", "hidden": "n_embd", "heads": "n_head", "intermediate": "n_inner", "vocab": "vocab_size",
         "eps": "layer_norm_epsilon", "tied": "tie_word_embeddings", "positions": "n_positions"},
        {"layer": "transformer.h.{i}", "qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj",
         "attn_norm": "ln_1", "mlp_norm": "ln_2", "embed": "transformer.wte", "pos_embed": "transformer.wpe",
         "final_norm": "transformer.ln_f", "lm_head": "lm_head"},
        "LayerNorm", mlp="gelu", positions="learned", conv1d=True, tied_default=True,
        defaults={"qkv_bias": True, "o_bias": True, "mlp_bias": True},
    ),
    "bert": Family(
        "bert", ("bert",),
        {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
         "intermediate": "intermediate_size", "vocab": "vocab_size", "eps": "layer_norm_eps",
         "positions": "max_position_embeddings", "type_vocab": "type_vocab_size"},
        {"layer": "encoder.layer.{i}", "q": "attention.self.query", "k": "attention.self.key",
         "v": "attention.self.value", "o": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
         "up": "intermediate.dense", "down": "output.dense", "mlp_norm": "output.LayerNorm",
         "embed": "embeddings.word_embeddings", "pos_embed": "embeddings.position_embeddings"},
        "LayerNorm", placement="post", mlp="gelu", positions="learned",
        defaults={"qkv_bias": True, "o_bias": True, "mlp_bias": True},
    ),
}  # fmt: skip


def family_of(config: dict[str, Any]) -> Family:
    """The family table for a config, by its model_type."""
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise InputError(f"no architecture table for model_type {model_type!r} (known: {', '.join(known)})")


class Layout:
    """Answers role questions for one config: sizes, tensor names, weight orientation."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.family = family_of(config)

    def value(self, role: str) -> Any:
        """A config value by role (e.g. `hidden`), with the family's defaults and derivations."""
        key = self.family.config.get(role, "")
        if key and config_has(self.config, key):
            return self.config[key]
        if role in self.family.defaults:
            return self.family.defaults[role]
        derived = {
            "kv_heads": lambda: self.value("heads"),
            "head_dim": lambda: self.value("hidden") // self.value("heads"),
            "intermediate": lambda: 4 * self.value("hidden"),
            "tied": lambda: self.family.tied_default,
            "qkv_bias": lambda: False,
            "o_bias": lambda: False,
            "mlp_bias": lambda: False,
        }
        if role in derived:
            return derived[role]()
        raise InputError(f"{self.family.name} config has no {key or role}")

    def key(self, role: str) -> str:
        """The config key that holds a role's value."""
        key = self.family.config.get(role)
        if not key:
            raise InputError(f"{self.family.name} has no config key for {role}")
        return key

    def has(self, role: str) -> bool:
        return role in self.family.tensors

    @property
    def zero_pads_exactly(self) -> bool:
        """Whether zero-padding the hidden size keeps the function: RMSNorm sees only a scale,
        which the gains and eps absorb, unless per-head q/k norms share that eps."""
        return self.family.norm == "RMSNorm" and not self.has("q_norm")

    @property
    def tied_head(self) -> tuple[str, str] | None:
        """(output head weight, input embedding weight) when the head is tied to the embedding:
        transformers then builds the head from the embedding, whatever the checkpoint holds."""
        if not (self.has("lm_head") and self.value("tied")):
            return None
        return f"{self.module('lm_head')}.weight", f"{self.module('embed')}.weight"

    def module(self, role: str, layer: int | None = None) -> str:
        """Module path of a role; layer roles need the layer index."""
        path = self.family.tensors[role]
        if layer is None:
            return path
        return f"{self.family.tensors['layer'].format(i=layer)}.{path}"

    def layer_prefix(self, layer: int) -> str:
        return self.family.tensors["layer"].format(i=layer) + "."

    def layer_of(self, name: str) -> int | None:
        """The layer a tensor belongs to; None for the others (embeddings, final norm, head)."""
        before, _, after = self.family.tensors["layer"].partition("{i}")
        match = re.match(rf"{re.escape(before)}(\d+){re.escape(after)}\.", name)
        return int(match[1]) if match and int(match[1]) < self.value("layers") else None

    def tensors_by_layer(self, tensors: dict[str, T]) -> dict[int, dict[str, T]]:
        """Each layer's tensors by their name relative to the layer (`self_attn.q_proj.weight`)."""
        found: dict[int, dict[str, T]] = {layer: {} for layer in range(self.value("layers"))}
        for name, value in tensors.items():
            layer = self.layer_of(name)
            if layer is not None:
                found[layer][name[len(self.layer_prefix(layer)) :]] = value
        return found

    def is_input_side(self, name: str) -> bool:
        """Whether a non-layer tensor sits before the layers (token and position embeddings)."""
        return any(self.has(role) and name.startswith(self.module(role) + ".") for role in ("embed", "pos_embed"))

    def out_axis(self, role: str) -> int:
        """Which axis of a linear weight indexes its outputs (0 for nn.Linear, 1 for Conv1D)."""
        return 1 if self.family.conv1d and role not in ("embed", "pos_embed", "lm_head") else 0

    def in_axis(self, role: str) -> int:
        return 1 - self.out_axis(role)


def config_has(config: dict[str, Any], key: str) -> bool:
    return key in config and config[key] is not None
