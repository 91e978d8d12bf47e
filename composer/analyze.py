"""The architecture analyzer: a Hugging Face config → the MES v1 architecture record.

For a family with an architecture table, everything is computed from the config alone: sizes, norm type and placement,
attention kind, positions, MLP kind, biases, the exact parameter count (equal to
`model.num_parameters()` of the model `from_pretrained` builds), and the compatibility
matrix — for each growth operator, whether it is lossless, lossy only, or unsupported for
this architecture, and why.
"""

from __future__ import annotations

from typing import Any

from weightbank.registry.errors import InputError
from weightbank.registry.manifests import validate

from .architectures import Layout, family_of


def count_parameters(config: dict[str, Any]) -> int:
    """Exact number of parameters of the model a config describes (tied weights once)."""
    layout = Layout(config)
    family = layout.family.name
    d, vocab, layers = layout.value("hidden"), layout.value("vocab"), layout.value("layers")
    inner = layout.value("intermediate")
    if family == "gpt2":
        positions = layout.value("positions")
        per_layer = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * inner + inner) + (inner * d + d)
        lm_head = 0 if layout.value("tied") else vocab * d
        return vocab * d + positions * d + layers * per_layer + 2 * d + lm_head
    if family == "bert":
        embeddings = (vocab + layout.value("positions") + layout.value("type_vocab")) * d + 2 * d
        per_layer = 4 * (d * d + d) + 2 * d + (d * inner + inner) + (inner * d + d) + 2 * d
        pooler = d * d + d
        return embeddings + layers * per_layer + pooler
    heads, kv_heads, head_dim = layout.value("heads"), layout.value("kv_heads"), layout.value("head_dim")
    q, kv = heads * head_dim, kv_heads * head_dim
    attention = d * q + 2 * d * kv + q * d
    attention += (q + 2 * kv) * layout.value("qkv_bias") + d * layout.value("o_bias")
    attention += 2 * head_dim if layout.has("q_norm") else 0
    mlp = 3 * d * inner + (2 * inner + d) * layout.value("mlp_bias")
    lm_head = 0 if layout.value("tied") else vocab * d
    return vocab * d + layers * (attention + mlp + 2 * d) + d + lm_head


def attention_kind(heads: int, kv_heads: int) -> str:
    if kv_heads == heads:
        return "MHA"
    return "MQA" if kv_heads == 1 else "GQA"


def compatibility(config: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Operator → {support: lossless|lossy|unsupported, reason}."""
    layout = Layout(config)
    family = layout.family
    matrix: dict[str, dict[str, str]] = {"adapter.lora": _entry("lossless", "exact PEFT merge")}
    if family.placement == "post":
        matrix["expand.depth"] = _entry(
            "lossy",
            "post-LN: every block ends in a LayerNorm of the residual stream, so no block is an identity; "
            "only layer copies (method duplicate, or solar: SOLAR's depth up-scaling) are available, lossy",
        )
    else:
        matrix["expand.depth"] = _entry("lossless", "identity blocks: a copied block with its residual writers zeroed")
    matrix["expand.ffn"] = _entry(
        "lossless", "Net2Net neuron duplication (split writer columns) or zero-initialised writer columns"
    )
    matrix["expand.heads"] = _heads_support(layout)
    matrix["expand.hidden"] = _hidden_support(layout)
    return matrix


def _entry(support: str, reason: str) -> dict[str, str]:
    return {"support": support, "reason": reason}


def _heads_support(layout: Layout) -> dict[str, str]:
    if not layout.family.has_kv_heads:
        return _entry(
            "unsupported",
            f"{layout.family.name} derives head_dim = hidden / heads, so adding heads would change head_dim "
            "(RoPE/attention scale depend on it); grow the hidden size by duplication instead",
        )
    heads, kv_heads = layout.value("heads"), layout.value("kv_heads")
    if attention_kind(heads, kv_heads) == "MQA":
        return _entry(
            "lossy",
            "MQA: every query head shares one KV head; adding heads means adding KV heads, which turns the model "
            "into GQA — refused unless asked for explicitly (lossy: true)",
        )
    return _entry("lossless", "whole KV groups appended with zero o_proj input columns, or KV heads split in place")


def _hidden_support(layout: Layout) -> dict[str, str]:
    family = layout.family
    if family.placement == "post":
        return _entry(
            "unsupported",
            "post-LN: the residual stream is renormalised after every block; weightbank grows the hidden size "
            "of pre-norm models only",
        )
    if family.norm == "LayerNorm":
        heads = "" if family.has_kv_heads else " (whole heads: multiples of head_dim)"
        return _entry(
            "lossless",
            f"LayerNorm: any size{heads} by mean padding (stream [x, μ(x)], gains ×√(d/D), eps ×(d/D)), integer "
            "multiples by duplication (HyperCloning); zero padding shifts the mean (lossy)",
        )
    if layout.has("q_norm"):
        return _entry(
            "lossless",
            "integer multiples by duplication; other sizes need eps rescaled, which the per-head q/k norms share "
            "from the same config key, so zero padding is lossy (≈1e-6)",
        )
    if family.embedding_scale:
        return _entry(
            "lossless",
            f"any size: zero-padded stream, gains w′ = √(d/D)·(1 + w) − 1 ({family.name}'s x·(1 + w) norm), "
            "eps ×(d/D), embeddings ×√(d/D) for the √hidden scale; the tied head is untied and keeps the original "
            "embedding; or integer multiples by duplication",
        )
    return _entry("lossless", "any size: zero-padded stream with norm gains ×√(d/D) and eps ×(d/D)")


def analyze(config: dict[str, Any]) -> dict[str, Any]:
    """The MES v1 architecture record of a config (validated against its schema)."""
    layout = Layout(config)
    family = layout.family
    heads = layout.value("heads")
    kv_heads = layout.value("kv_heads")
    record: dict[str, Any] = {
        "mes_version": "1",
        "kind": "architecture",
        "family": family.name,
        "model_type": config["model_type"],
        "layers": layout.value("layers"),
        "hidden": layout.value("hidden"),
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": layout.value("head_dim"),
        "intermediate": layout.value("intermediate"),
        "vocab": layout.value("vocab"),
        "norm": {
            "type": family.norm,
            "placement": family.placement,
            "eps": float(layout.value("eps")),
            "unit_offset": family.unit_offset_norm,
            "qk_norm": layout.has("q_norm"),
        },
        "attention": attention_kind(heads, kv_heads),
        "positions": family.positions,
        "tied_embeddings": bool(layout.value("tied")) if family.placement == "pre" else False,
        "mlp": family.mlp,
        "biases": {
            "qkv": bool(layout.value("qkv_bias")),
            "o": bool(layout.value("o_bias")),
            "mlp": bool(layout.value("mlp_bias")),
            "norm": family.norm == "LayerNorm",
        },
        "parameters": count_parameters(config),
        "operators": compatibility(config),
    }
    validate(record, "architecture", "architecture record")
    return record


# Config values worth showing for a family weightbank has no table for (MoE, attention window…).
_NOTABLE_CONFIG = (
    "num_local_experts", "num_experts", "num_experts_per_tok", "sliding_window", "max_position_embeddings",
    "hidden_act", "tie_word_embeddings", "rope_theta",
)  # fmt: skip
_SIZES = {
    "layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads", "head_dim": "head_dim", "intermediate": "intermediate_size",
    "vocab": "vocab_size",
}  # fmt: skip


def analyze_any(config: dict[str, Any]) -> dict[str, Any]:
    """`analyze` where weightbank has an architecture table for the family; otherwise what the
    config and a meta-device model tell — sizes, norm modules, the exact parameter count —
    with every growth operator marked unsupported and the reason (`growth: unsupported`)."""
    try:
        family_of(config)
    except InputError as exc:
        return _partial_record(config, str(exc))
    return analyze(config)


def _partial_record(config: dict[str, Any], reason: str) -> dict[str, Any]:
    import torch

    from .hf_model import config_object, meta_model

    settings = config_object(config)
    try:
        model = meta_model(settings, torch.float32)  # no memory: parameters live on the meta device
    except (AssertionError, ValueError, RuntimeError, TypeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise InputError(
            f"transformers cannot build a {config['model_type']} model from this config: {detail}"
        ) from None
    sizes = {key: getattr(settings, name, None) for key, name in _SIZES.items()}
    unsupported = {"support": "unsupported", "reason": f"{reason}; growth operators need one"}
    return {
        "model_type": config["model_type"],
        "model_class": type(model).__name__,
        **{key: value for key, value in sizes.items() if isinstance(value, int)},
        "config": {key: config[key] for key in _NOTABLE_CONFIG if config.get(key) is not None},
        "norm_modules": sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}),
        "parameters": model.num_parameters(),
        "growth": "unsupported",
        "reason": reason,
        "operators": {
            "adapter.lora": {"support": "lossless", "reason": "exact PEFT merge (by tensor name: no table needed)"},
            **{op: dict(unsupported) for op in ("expand.depth", "expand.ffn", "expand.heads", "expand.hidden")},
        },
    }
