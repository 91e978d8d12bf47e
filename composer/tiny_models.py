"""Tiny models with random weights, built from real transformers configs.

Used by `weightbank demo`, the tests and the benchmarks: no downloads, seconds to make.
`make_config(family, **overrides)` gives the config; `save_tiny_model` writes a folder
exactly as `save_pretrained` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

# Small but structurally faithful: GQA where the family has it, biases where it has them.
_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": (
        "LlamaConfig",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=False),
    ),
    "qwen2": (
        "Qwen2Config",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, tie_word_embeddings=False),
    ),
    "mistral": (
        "MistralConfig",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, sliding_window=None),
    ),
    "qwen3": (
        "Qwen3Config",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=128,
             tie_word_embeddings=False),
    ),
    "gemma": (
        "GemmaConfig",
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1, head_dim=16, vocab_size=128, max_position_embeddings=128),
    ),
    "gpt2": (
        "GPT2Config",
        dict(n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=128, bos_token_id=0, eos_token_id=0),
    ),
}  # fmt: skip
FAMILIES = tuple(name for name, (cls, _) in _FAMILIES.items() if hasattr(transformers, cls))


def make_config(family: str, **overrides: Any) -> transformers.PretrainedConfig:
    """The tiny config of `family` (see FAMILIES), with `overrides` applied."""
    if family not in FAMILIES:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(FAMILIES)}")
    cls_name, defaults = _FAMILIES[family]
    return getattr(transformers, cls_name)(**{**defaults, **overrides})


def make_tiny_model(family: str, seed: int = 0, **overrides: Any) -> transformers.PreTrainedModel:
    """A causal LM of `family` with seeded random float32 weights, in eval mode."""
    config = make_config(family, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # Norm gains start at exactly 1 (or 0); perturb them so tests see every tensor matter.
        for name, param in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def save_tiny_model(
    family: str, folder: str | Path, seed: int = 0, max_shard_size: str | int = "5GB", **overrides: Any
) -> Path:
    """Make a tiny model and `save_pretrained` it (safetensors) into `folder`."""
    model = make_tiny_model(family, seed, **overrides)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return Path(folder)
