"""`expand.hidden`: widen the residual stream (hidden size), keeping the function.

    - op: expand.hidden
      size: 96              # the new hidden size
      method: zero          # zero (RMSNorm, any size) | mean (LayerNorm, any size) | duplicate (multiples)
      ffn_factor: 2         # duplicate: FFN growth factor (default: the width factor k)
      kv_heads: keep        # duplicate: keep | tile the KV heads (default: keep for MQA, else tile)
      lossy: true           # accept a construction that is not exact (see below)
      noise: 0.01           # optional, placed where it stays exact

`zero` (RMSNorm pre-norm models, any D; s = d/D): the stream becomes [x, 0]. Embeddings and
every writer (o_proj, down_proj and their biases) get zero new rows; readers (q/k/v,
gate/up, lm_head) get new input columns that only ever see zeros (free: zero, or the noise);
every norm gain becomes √s·gain (new entries √s) and rms_norm_eps becomes s·eps, so
RMSNorm(x') = x'/√(s·ms(x) + s·eps)·√s·g = RMSNorm(x) on the old coordinates — exactly.
Gemma's norm is x·(1 + w): the gain rule becomes w' = √s·(1 + w) − 1; its embeddings are
multiplied by √hidden, so they are stored ×√s, and the tied head is untied (it keeps the
original embedding, padded).

`mean` (LayerNorm pre-norm models, any D): the stream becomes [x, μ(x)], whose mean is μ(x)
and whose variance is s·var(x); every writer and the embeddings put the mean of their old
output coordinates into the new ones, gains become √s·gain, eps becomes s·eps, new biases 0:
LayerNorm(x') = [LayerNorm(x), 0] exactly; tied embeddings stay correct.

GPT-2 derives head_dim = n_embd / n_head, so padding (zero or mean) to D adds whole heads
(D must be a multiple of head_dim): the new heads copy existing q/k/v columns and write
nothing (zero c_proj rows). n_inner is written out so that the FFN keeps its size.

`duplicate` (HyperCloning; D = k·d; RMSNorm or LayerNorm, pre-norm): the stream becomes
[x, …, x]. Embeddings are tiled (Gemma: and divided by √k); every internal weight is tiled
along its output axis and along its input axis divided by the input's growth factor, so
heads grow k-fold with head_dim kept and the FFN grows `ffn_factor`-fold; norm gains and
biases are tiled and eps is unchanged; the output head is tiled and divided by k, which
unties tied embeddings. `kv_heads: keep` keeps the KV head count: query heads are then
ordered group by group so that every copy of a query head still reads its own KV head
(HyperCloning keeps MQA's KV head the same way; for GQA its tiled order pairs query copies
with the wrong KV head). Noise is added as k blocks that sum to zero along a reader's input axis.

Lossy on request only: zero padding of Qwen3-style models (their per-head q/k norms share
rms_norm_eps, so eps is left alone; error ≈ 1e-6) and of LayerNorm models (the mean shifts).
Refused: post-LN models.
"""

from __future__ import annotations

import math
from typing import Any

from ..analyze import attention_kind
from ..architectures import Layout
from ..growth import (
    NoiseSpec,
    append,
    choice_parameter,
    int_parameter,
    noise_parameter,
    projections,
    source_is_oracle,
    weight_and_bias,
    with_config,
)
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..tasks import Add, Concat, Fill, IndexSelect, Mean, Scale, Slice, Task

NAME = "expand.hidden"
oracle = source_is_oracle  # the step preserves the function
INTERNAL = ("q", "k", "v", "qkv", "o", "gate", "up", "down")
NORMS = ("attn_norm", "mlp_norm")
WRITERS = ("o", "down")
DUPLICATE_ONLY = ("ffn_factor", "kv_heads")


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    check_parameters(step, {"size", "method", "lossy", "noise", "seed", *DUPLICATE_ONLY})
    layout = Layout(state.config)
    family = layout.family
    hidden, new_hidden = layout.value("hidden"), int_parameter(step, "size")
    if new_hidden <= hidden:
        raise PlanProblem(f"size must exceed the current hidden size {hidden}, got {new_hidden}")
    if family.placement != "pre":
        raise PlanProblem(f"{family.name} is post-LN: the stream is renormalised after every block; refused")
    default = "zero" if layout.zero_pads_exactly else "duplicate"
    method = choice_parameter(step, "method", ("zero", "mean", "duplicate"), default)
    noise = noise_parameter(step)
    if method == "duplicate":
        if new_hidden % hidden:
            padding = "zero" if family.norm == "RMSNorm" else "mean"
            raise PlanProblem(
                f"duplication needs a multiple of {hidden}, got {new_hidden}; "
                f"{family.norm} models can use method: {padding} for any size"
            )
        return _duplicate(state, layout, new_hidden // hidden, step, noise)
    given = [key for key in DUPLICATE_ONLY if key in step]
    if given:
        raise PlanProblem(f"{', '.join(given)} apply to method duplicate; padding keeps the heads and the FFN")
    if method == "mean" and family.norm != "LayerNorm":
        raise PlanProblem("mean padding is exact for LayerNorm only; RMSNorm models use method: zero")
    if method == "zero" and not layout.zero_pads_exactly and not step.get("lossy"):
        why = (
            "LayerNorm: zero padding shifts the mean; method: mean is exact"
            if family.norm != "RMSNorm"
            else "the per-head q/k norms share rms_norm_eps, which zero padding must rescale"
        )
        raise PlanProblem(f"zero padding is not exact here ({why}); use duplication or set lossy: true")
    return _pad(state, layout, new_hidden, method, noise)


def _pad(state: ModelState, layout: Layout, new_hidden: int, method: str, noise: NoiseSpec | None) -> ModelState:
    """Zero padding [x, 0] or mean padding [x, μ(x)] of the stream (see module docstring)."""
    family = layout.family
    hidden = layout.value("hidden")
    extra = new_hidden - hidden
    root = math.sqrt(hidden / new_hidden)
    tensors = dict(state.tensors)
    updates: dict[str, Any] = {layout.key("hidden"): new_hidden}

    def writer(task: Task, axis: int) -> Task:
        if method == "zero":
            return append(task, axis, extra)
        return Concat((task, IndexSelect(Mean(task, axis), axis, (0,) * extra)), axis)

    for name in _embeddings(layout):
        tensors[name] = writer(Scale(tensors[name], root) if family.embedding_scale else tensors[name], 1)
    lm_head = f"{layout.module('lm_head')}.weight"
    tied = layout.tied_head is not None
    if tied and family.embedding_scale:  # the head keeps the unscaled embedding: untied
        tensors[lm_head] = state.tensors[f"{layout.module('embed')}.weight"]
        updates[layout.key("tied")] = False
    if lm_head in tensors:
        tensors[lm_head] = append(tensors[lm_head], 1, extra, noise=noise, label=lm_head)
    for norm in _norm_names(state, layout):
        if not norm.endswith(".weight"):
            tensors[norm] = append(tensors[norm], 0, extra)
        elif family.unit_offset_norm:  # x·(1 + w): 1 + w' = √s·(1 + w), new entries 1 + w' = √s
            gain = Add(Scale(tensors[norm], root), Fill(tensors[norm].shape, root - 1.0))
            tensors[norm] = append(gain, 0, extra, root - 1.0)
        else:  # gains ×√s, new entries √s (they only ever scale zeros)
            tensors[norm] = append(Scale(tensors[norm], root), 0, extra, root)
    if not family.has_kv_heads:  # GPT-2: the attention is as wide as the stream
        updates.update(_add_heads(state, layout, tensors, new_hidden))
    for role, weight, bias in projections(state, layout, INTERNAL):
        if role in WRITERS:
            tensors[weight] = writer(tensors[weight], layout.out_axis(role))
            if bias is not None:
                tensors[bias] = writer(tensors[bias], 0)
        else:
            tensors[weight] = append(tensors[weight], layout.in_axis(role), extra, noise=noise, label=weight)
    exact_eps = layout.zero_pads_exactly or method == "mean"
    updates[layout.key("eps")] = layout.value("eps") * (hidden / new_hidden if exact_eps else 1.0)
    if family.has_kv_heads:
        updates[layout.key("head_dim")] = layout.value("head_dim")
    updates[layout.key("intermediate")] = layout.value("intermediate")
    return ModelState(with_config(state, **updates), tensors)


def _add_heads(state: ModelState, layout: Layout, tensors: dict[str, Task], new_hidden: int) -> dict[str, Any]:
    """GPT-2's attention width follows n_embd: new heads copy existing heads' q/k/v columns
    (and biases) and get zero c_proj rows, so they attend and write nothing."""
    heads, hidden = layout.value("heads"), layout.value("hidden")
    head_dim = hidden // heads
    if new_hidden % head_dim:
        raise PlanProblem(
            f"{layout.family.name} derives head_dim = hidden / heads, so the attention grows by whole heads of "
            f"{head_dim}: the new size must be a multiple of {head_dim}, got {new_hidden}"
        )
    copies = [h % heads for h in range(heads, new_hidden // head_dim)]
    columns = tuple(range(hidden)) + tuple(h * head_dim + t for h in copies for t in range(head_dim))
    for layer in range(layout.value("layers")):
        weight, bias = weight_and_bias(state, layout, "qkv", layer)
        axis = layout.out_axis("qkv")
        blocks = _thirds(tensors[weight], axis, hidden)
        tensors[weight] = Concat(tuple(IndexSelect(b, axis, columns) for b in blocks), axis)
        if bias is not None:
            tensors[bias] = Concat(tuple(IndexSelect(b, 0, columns) for b in _thirds(tensors[bias], 0, hidden)), 0)
        output, _ = weight_and_bias(state, layout, "o", layer)
        tensors[output] = append(tensors[output], layout.in_axis("o"), new_hidden - hidden)
    return {layout.key("heads"): new_hidden // head_dim}


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
    if k == 1:
        return part
    if noise is None:
        return Concat((part,) * k, axis)
    blocks = [noise.task(task.shape, label, i) for i in range(k - 1)]
    total: Task = blocks[0]
    for block in blocks[1:]:
        total = Add(total, block)
    parts = [Add(part, block) for block in blocks] + [Add(part, Scale(total, -1.0))]
    return Concat(tuple(parts), axis)


def _grow(task: Task, layout: Layout, role: str, k_in: int, k_out: int, noise: NoiseSpec | None, label: str) -> Task:
    """An internal weight: tiled k_out times along its output axis, and k_in times along its
    input axis divided by k_in (the input arrives k_in times)."""
    inputs = _tile(task, layout.in_axis(role), k_in, 1.0 / k_in, noise, label)
    return _tile(inputs, layout.out_axis(role), k_out)


def _duplicate(state: ModelState, layout: Layout, k: int, step: dict[str, Any], noise: NoiseSpec | None) -> ModelState:
    family = layout.family
    hidden = layout.value("hidden")
    ffn = int_parameter(step, "ffn_factor") if "ffn_factor" in step else k
    keep_kv = _keeps_kv_heads(layout, step)
    tensors = dict(state.tensors)
    for name in _embeddings(layout):
        tensors[name] = _tile(tensors[name], 1, k, 1.0 / math.sqrt(k) if family.embedding_scale else 1.0)
    lm_head = f"{layout.module('lm_head')}.weight"
    tied = layout.tied_head is not None
    head = state.tensors[f"{layout.module('embed')}.weight"] if tied else state.tensors[lm_head]
    tensors[lm_head] = _tile(head, 1, k, 1.0 / k, noise, lm_head)
    for norm in _norm_names(state, layout):
        tensors[norm] = _tile(tensors[norm], 0, k)
    factors = {"q": (k, k), "k": (k, 1 if keep_kv else k), "v": (k, 1 if keep_kv else k), "o": (k, k),
               "gate": (k, ffn), "up": (k, ffn), "down": (ffn, k)}  # fmt: skip
    order = _group_major(layout, k) if keep_kv else None
    for role, weight, bias in projections(state, layout, INTERNAL):
        if role == "qkv":  # GPT-2's fused [q | k | v]: tile each block
            tensors[weight] = _blockwise(tensors[weight], layout, role, k, noise, weight)
            if bias is not None:
                tensors[bias] = Concat(tuple(_tile(b, 0, k) for b in _thirds(tensors[bias], 0, hidden)), 0)
            continue
        k_in, k_out = factors[role]
        tensors[weight] = _grow(tensors[weight], layout, role, k_in, k_out, noise, weight)
        if bias is not None:
            tensors[bias] = _tile(tensors[bias], 0, k_out)
        if order is not None and role in ("q", "o"):  # q rows and o_proj input columns, group by group
            tensors[weight] = IndexSelect(tensors[weight], layout.out_axis(role) if role == "q" else 1, order)
            if bias is not None and role == "q":
                tensors[bias] = IndexSelect(tensors[bias], 0, order)
    updates: dict[str, Any] = {layout.key("hidden"): hidden * k, layout.key("heads"): layout.value("heads") * k}
    if family.has_kv_heads:
        updates[layout.key("kv_heads")] = layout.value("kv_heads") * (1 if keep_kv else k)
        updates[layout.key("head_dim")] = layout.value("head_dim")
    intermediate_key = layout.key("intermediate")
    if state.config.get(intermediate_key) is not None or ffn != k:
        updates[intermediate_key] = layout.value("intermediate") * ffn
    if tied:
        updates[layout.key("tied")] = False
    return ModelState(with_config(state, **updates), tensors)


def _keeps_kv_heads(layout: Layout, step: dict[str, Any]) -> bool:
    """`kv_heads: keep | tile`; MQA keeps its single KV head unless told otherwise."""
    if not layout.family.has_kv_heads:
        if "kv_heads" in step:
            raise PlanProblem(f"{layout.family.name} has no separate KV heads; kv_heads does not apply")
        return False
    mqa = attention_kind(layout.value("heads"), layout.value("kv_heads")) == "MQA"
    return choice_parameter(step, "kv_heads", ("keep", "tile"), "keep" if mqa else "tile") == "keep"


def _group_major(layout: Layout, k: int) -> tuple[int, ...] | None:
    """With the KV heads kept, query head (copy c, head j·g + t) must read KV head j, so the
    tiled q rows [copy 0 | copy 1 | …] are reordered to group j: copy 0's g heads, copy 1's…
    (None when that is the tiled order already: MQA)."""
    heads, kv_heads, head_dim = layout.value("heads"), layout.value("kv_heads"), layout.value("head_dim")
    group = heads // kv_heads
    sources = [c * heads + j * group + t for j in range(kv_heads) for c in range(k) for t in range(group)]
    if sources == sorted(sources):
        return None
    return tuple(h * head_dim + r for h in sources for r in range(head_dim))


def _thirds(task: Task, axis: int, size: int) -> list[Task]:
    return [Slice(task, axis, i * size, (i + 1) * size) for i in range(3)]


def _blockwise(task: Task, layout: Layout, role: str, k: int, noise: NoiseSpec | None, label: str) -> Task:
    axis = layout.out_axis(role)
    blocks = _thirds(task, axis, layout.value("hidden"))
    return Concat(tuple(_grow(b, layout, role, k, k, noise, f"{label}:{i}") for i, b in enumerate(blocks)), axis)
