"""`expand.heads`: more attention heads, respecting GQA; head_dim never changes.

    - op: expand.heads
      heads: 12             # new number of query heads: whole KV groups are appended…
      # kv_heads: 4         # …or split every KV head into several (repeat_interleave order)
      lossy: true           # required to grow an MQA model (it becomes GQA)
      noise: 0.01           # optional, on the new heads' q/k/v rows: still exact

Appending groups: each new group is g query heads plus one KV head (g = heads per group,
HF maps query head i to KV head ⌊i/g⌋), copied from existing groups, with zero o_proj input
columns — the new heads attend but write nothing. Splitting KV heads duplicates each KV
head r times in place (repeat_interleave: tiling would pair query heads with the wrong KV
head); query head i then reads KV head ⌊i/(g/r)⌋, a copy of the one it read before.
`head_dim` is written into the config, because heads × head_dim no longer equals hidden.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from ..analyze import attention_kind
from ..architectures import Layout
from ..growth import NoiseSpec, int_parameter, noise_parameter, weight_and_bias, with_config
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..oracle import OracleContext
from ..tasks import Concat, Fill, IndexSelect, Slice, Task

NAME = "expand.heads"


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    check_parameters(step, {"heads", "kv_heads", "lossy", "noise", "seed"})
    layout = Layout(state.config)
    if "kv_heads" not in layout.family.config:
        raise PlanProblem(
            f"{layout.family.name} derives head_dim = hidden / heads, so adding heads would change head_dim; "
            "grow the hidden size (duplication) instead"
        )
    if ("heads" in step) == ("kv_heads" in step):
        raise PlanProblem("give either heads (append KV groups) or kv_heads (split KV heads)")
    heads, kv_heads, head_dim = layout.value("heads"), layout.value("kv_heads"), layout.value("head_dim")
    if "kv_heads" in step:
        return _split_kv(state, layout, heads, kv_heads, head_dim, int_parameter(step, "kv_heads"))
    new_heads = int_parameter(step, "heads")
    group = heads // kv_heads
    if new_heads <= heads or (new_heads - heads) % group:
        raise PlanProblem(
            f"heads must grow by whole KV groups of {group} query heads (from {heads}: {heads + group}, "
            f"{heads + 2 * group}, …), got {new_heads}"
        )
    if attention_kind(heads, kv_heads) == "MQA" and not step.get("lossy"):
        raise PlanProblem(
            "MQA model: adding heads means adding KV heads, which turns it into GQA; set lossy: true to ask for it"
        )
    groups = (new_heads - heads) // group
    noise = noise_parameter(step)
    tensors = dict(state.tensors)
    q_rows = _head_rows(range(heads), head_dim, [h % heads for h in range(heads, heads + groups * group)])
    kv_rows = _head_rows(range(kv_heads), head_dim, [g % kv_heads for g in range(kv_heads, kv_heads + groups)])
    for layer in range(layout.value("layers")):
        for role, rows, old in (("q", q_rows, heads), ("k", kv_rows, kv_heads), ("v", kv_rows, kv_heads)):
            weight, bias = weight_and_bias(state, layout, role, layer)
            tensors[weight] = _grow(tensors[weight], rows, old * head_dim, noise, weight)
            if bias is not None:
                tensors[bias] = _grow(tensors[bias], rows, old * head_dim, noise, bias)
        weight, _ = weight_and_bias(state, layout, "o", layer)
        o = tensors[weight]
        axis = layout.in_axis("o")
        zeros_shape = list(o.shape)
        zeros_shape[axis] = groups * group * head_dim
        tensors[weight] = Concat((o, Fill(tuple(zeros_shape), 0.0, o.dtype)), axis)
    config = with_config(
        state,
        **{
            layout.key("heads"): new_heads,
            layout.key("kv_heads"): kv_heads + groups,
            layout.key("head_dim"): head_dim,
        },
    )
    return ModelState(config, tensors)


def _head_rows(existing: range, head_dim: int, copies: list[int]) -> tuple[int, ...]:
    """Row index: every existing head, then one copy of each head in `copies`."""
    return tuple(range(len(existing) * head_dim)) + tuple(h * head_dim + t for h in copies for t in range(head_dim))


def _grow(task: Task, rows: tuple[int, ...], old: int, noise: NoiseSpec | None, label: str) -> Task:
    grown: Task = IndexSelect(task, 0, rows)
    if noise is None:
        return grown
    return Concat((Slice(grown, 0, 0, old), noise.add(Slice(grown, 0, old, len(rows)), label)), 0)


def _split_kv(state: ModelState, layout: Layout, heads: int, kv_heads: int, head_dim: int, new_kv: int) -> ModelState:
    if new_kv <= kv_heads or new_kv % kv_heads or heads % new_kv:
        raise PlanProblem(
            f"kv_heads must be a multiple of the current {kv_heads} that divides the {heads} query heads, got {new_kv}"
        )
    repeat = new_kv // kv_heads
    rows = tuple(h * head_dim + t for h in range(kv_heads) for _ in range(repeat) for t in range(head_dim))
    tensors = dict(state.tensors)
    for layer in range(layout.value("layers")):
        for role in ("k", "v"):
            weight, bias = weight_and_bias(state, layout, role, layer)
            tensors[weight] = IndexSelect(tensors[weight], 0, rows)
            if bias is not None:
                tensors[bias] = IndexSelect(tensors[bias], 0, rows)
    config = with_config(state, **{layout.key("kv_heads"): new_kv, layout.key("head_dim"): head_dim})
    return ModelState(config, tensors)


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """Head growth preserves the function: the source model is the oracle."""
    return model
