"""`expand.hidden`: widen the residual stream (hidden size), keeping the function.

    - op: expand.hidden
      size: 96              # the new hidden size
      method: zero          # zero (RMSNorm, any size) | duplicate (integer multiples)
      lossy: true           # accept a construction that is not exact (see below)
      noise: 0.01           # optional, placed where it stays exact

`zero` (RMSNorm pre-norm models, any D; s = d/D): the stream becomes [x, 0]. Embeddings and
every writer (o_proj, down_proj and their biases) get zero new rows; readers (q/k/v,
gate/up, lm_head) get new input columns that only ever see zeros (free: zero, or the noise);
every norm gain becomes √s·gain (new entries √s) and rms_norm_eps becomes s·eps, so
RMSNorm(x') = x'/√(s·ms(x) + s·eps)·√s·g = RMSNorm(x) on the old coordinates — exactly.

`duplicate` (HyperCloning; D = k·d; RMSNorm or LayerNorm, pre-norm): the stream becomes
[x, …, x]. Embeddings are tiled; every internal weight (q/k/v, o, gate/up/down, GPT-2's
fused c_attn block by block) is tiled k times along both axes and divided by k along its
input axis, so heads, KV heads and the FFN grow k-fold with head_dim kept; norm gains and
biases are tiled and eps is unchanged (mean and variance of a tiled vector are unchanged);
the output head is tiled and divided along its input axis, which unties tied embeddings.
Noise is added as k blocks that sum to zero along a reader's input axis.

Lossy on request only: zero padding of Qwen3-style models (their per-head q/k norms share
rms_norm_eps, so eps is left alone; error ≈ 1e-6) and of LayerNorm models (the mean shifts).
Refused: post-LN models and Gemma (embeddings scaled by √hidden and tied to the head).
"""

from __future__ import annotations

import math
from typing import Any

from ..architectures import Layout
from ..growth import (
    NoiseSpec,
    append,
    choice_parameter,
    int_parameter,
    noise_parameter,
    projections,
    source_is_oracle,
    with_config,
)
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..tasks import Add, Concat, Scale, Slice, Task

NAME = "expand.hidden"
oracle = source_is_oracle  # the step preserves the function
INTERNAL = ("q", "k", "v", "qkv", "o", "gate", "up", "down")
NORMS = ("attn_norm", "mlp_norm")


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    check_parameters(step, {"size", "method", "lossy", "noise", "seed"})
    layout = Layout(state.config)
    family = layout.family
    hidden, new_hidden = layout.value("hidden"), int_parameter(step, "size")
    if new_hidden <= hidden:
        raise PlanProblem(f"size must exceed the current hidden size {hidden}, got {new_hidden}")
    if family.placement != "pre":
        raise PlanProblem(f"{family.name} is post-LN: the stream is renormalised after every block; refused")
    if family.embedding_scale:
        raise PlanProblem(
            f"{family.name} scales embeddings by √hidden and ties them to the output head: no exact widening; refused"
        )
    multiple = new_hidden % hidden == 0
    default = "zero" if layout.zero_pads_exactly else "duplicate"
    method = choice_parameter(step, "method", ("zero", "duplicate"), default)
    lossy = bool(step.get("lossy"))
    noise = noise_parameter(step)
    if method == "duplicate":
        if not multiple:
            raise PlanProblem(
                f"duplication needs a multiple of {hidden}, got {new_hidden}"
                + ("; RMSNorm models can use method: zero for any size" if family.norm == "RMSNorm" else "")
            )
        return _duplicate(state, layout, new_hidden // hidden, noise)
    if not layout.zero_pads_exactly and not lossy:
        why = (
            "LayerNorm: zero padding shifts the mean"
            if family.norm != "RMSNorm"
            else "the per-head q/k norms share rms_norm_eps, which zero padding must rescale"
        )
        raise PlanProblem(f"zero padding is not exact here ({why}); use duplication or set lossy: true")
    return _zero_pad(state, layout, new_hidden, noise)


def _zero_pad(state: ModelState, layout: Layout, new_hidden: int, noise: NoiseSpec | None) -> ModelState:
    hidden = layout.value("hidden")
    extra = new_hidden - hidden
    root = math.sqrt(hidden / new_hidden)
    tensors = dict(state.tensors)

    for name in _embeddings(layout):
        tensors[name] = append(tensors[name], 1, extra)
    lm_head = f"{layout.module('lm_head')}.weight"
    if lm_head in tensors:
        tensors[lm_head] = append(tensors[lm_head], 1, extra, noise=noise, label=lm_head)
    for norm in _norm_names(state, layout):
        if norm.endswith(".weight"):  # gains ×√s, new entries √s (they only ever scale zeros)
            tensors[norm] = append(Scale(tensors[norm], root), 0, extra, root)
        else:
            tensors[norm] = append(tensors[norm], 0, extra)
    for role, weight, bias in projections(state, layout, INTERNAL):
        if role in ("o", "down"):
            tensors[weight] = append(tensors[weight], layout.out_axis(role), extra)
            if bias is not None:
                tensors[bias] = append(tensors[bias], 0, extra)
        else:
            tensors[weight] = append(tensors[weight], layout.in_axis(role), extra, noise=noise, label=weight)
    eps = layout.value("eps") * (hidden / new_hidden if layout.zero_pads_exactly else 1.0)
    config = with_config(
        state,
        **{layout.key("hidden"): new_hidden, layout.key("eps"): eps, layout.key("head_dim"): layout.value("head_dim")},
    )
    return ModelState(config, tensors)


def _embeddings(layout: Layout) -> list[str]:
    """Token (and learned position) embedding weights: writers whose rows are the stream."""
    return [f"{layout.module(role)}.weight" for role in ("embed", "pos_embed") if layout.has(role)]


def _norm_names(state: ModelState, layout: Layout) -> list[str]:
    modules = [layout.module("final_norm")]
    modules += [layout.module(role, layer) for layer in range(layout.value("layers")) for role in NORMS]
    return [f"{m}.{p}" for m in modules for p in ("weight", "bias") if f"{m}.{p}" in state.tensors]


def _tile(task: Task, axis: int, k: int, factor: float = 1.0, noise: NoiseSpec | None = None, label: str = "") -> Task:
    """k copies along `axis`, each × factor; with noise, k blocks N₀…N_{k-1} summing to zero."""
    part: Task = task if factor == 1.0 else Scale(task, factor)
    if noise is None:
        return Concat((part,) * k, axis)
    blocks = [noise.task(task.shape, label, i) for i in range(k - 1)]
    total: Task = blocks[0]
    for block in blocks[1:]:
        total = Add(total, block)
    parts = [Add(part, block) for block in blocks] + [Add(part, Scale(total, -1.0))]
    return Concat(tuple(parts), axis)


def _grow_both(task: Task, layout: Layout, role: str, k: int, noise: NoiseSpec | None, label: str) -> Task:
    """An internal weight: tiled along its output axis, and along its input axis divided by k."""
    inputs = _tile(task, layout.in_axis(role), k, 1.0 / k, noise, label)
    return _tile(inputs, layout.out_axis(role), k)


def _duplicate(state: ModelState, layout: Layout, k: int, noise: NoiseSpec | None) -> ModelState:
    hidden = layout.value("hidden")
    tensors = dict(state.tensors)
    for name in _embeddings(layout):
        tensors[name] = _tile(tensors[name], 1, k)
    lm_head = f"{layout.module('lm_head')}.weight"
    tied = bool(layout.value("tied"))
    head = state.tensors[f"{layout.module('embed')}.weight"] if tied else state.tensors[lm_head]
    tensors[lm_head] = _tile(head, 1, k, 1.0 / k, noise, lm_head)
    for norm in _norm_names(state, layout):
        tensors[norm] = _tile(tensors[norm], 0, k)
    for role, weight, bias in projections(state, layout, INTERNAL):
        if role == "qkv":  # GPT-2's fused [q | k | v]: tile each block
            tensors[weight] = _blockwise(tensors[weight], layout, role, k, noise, weight)
            if bias is not None:
                tensors[bias] = Concat(tuple(_tile(b, 0, k) for b in _thirds(tensors[bias], 0, hidden)), 0)
            continue
        tensors[weight] = _grow_both(tensors[weight], layout, role, k, noise, weight)
        if bias is not None:
            tensors[bias] = _tile(tensors[bias], 0, k)
    updates: dict[str, Any] = {layout.key("hidden"): hidden * k, layout.key("heads"): layout.value("heads") * k}
    if layout.family.has_kv_heads:
        updates[layout.key("kv_heads")] = layout.value("kv_heads") * k
        updates[layout.key("head_dim")] = layout.value("head_dim")
    intermediate_key = layout.key("intermediate")
    if state.config.get(intermediate_key) is not None:
        updates[intermediate_key] = layout.value("intermediate") * k
    if tied:
        updates[layout.key("tied")] = False
    return ModelState(with_config(state, **updates), tensors)


def _thirds(task: Task, axis: int, size: int) -> list[Task]:
    return [Slice(task, axis, i * size, (i + 1) * size) for i in range(3)]


def _blockwise(task: Task, layout: Layout, role: str, k: int, noise: NoiseSpec | None, label: str) -> Task:
    axis = layout.out_axis(role)
    blocks = _thirds(task, axis, layout.value("hidden"))
    return Concat(tuple(_grow_both(b, layout, role, k, noise, f"{label}:{i}") for i, b in enumerate(blocks)), axis)
