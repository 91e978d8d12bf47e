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

from ..analyze import attention_kind
from ..architectures import Layout
from ..growth import (
    append,
    int_parameter,
    noise_parameter,
    projections,
    select_with_noise,
    source_is_oracle,
    with_config,
)
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..tasks import IndexSelect

NAME = "expand.heads"
oracle = source_is_oracle  # the step preserves the function


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    check_parameters(step, {"heads", "kv_heads", "lossy", "noise", "seed"})
    layout = Layout(state.config)
    if not layout.family.has_kv_heads:
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
    rows_of = {
        "q": (q_rows, heads * head_dim),
        "k": (kv_rows, kv_heads * head_dim),
        "v": (kv_rows, kv_heads * head_dim),
    }
    for role, weight, bias in projections(state, layout, rows_of):
        rows, kept = rows_of[role]
        tensors[weight] = select_with_noise(tensors[weight], 0, rows, kept, noise, weight)
        if bias is not None:
            tensors[bias] = select_with_noise(tensors[bias], 0, rows, kept, noise, bias)
    for _, weight, _ in projections(state, layout, ("o",)):
        tensors[weight] = append(tensors[weight], layout.in_axis("o"), groups * group * head_dim)
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


def _split_kv(state: ModelState, layout: Layout, heads: int, kv_heads: int, head_dim: int, new_kv: int) -> ModelState:
    if new_kv <= kv_heads or new_kv % kv_heads or heads % new_kv:
        raise PlanProblem(
            f"kv_heads must be a multiple of the current {kv_heads} that divides the {heads} query heads, got {new_kv}"
        )
    repeat = new_kv // kv_heads
    rows = tuple(h * head_dim + t for h in range(kv_heads) for _ in range(repeat) for t in range(head_dim))
    tensors = dict(state.tensors)
    for _, weight, bias in projections(state, layout, ("k", "v")):
        tensors[weight] = IndexSelect(tensors[weight], 0, rows)
        if bias is not None:
            tensors[bias] = IndexSelect(tensors[bias], 0, rows)
    config = with_config(state, **{layout.key("kv_heads"): new_kv, layout.key("head_dim"): head_dim})
    return ModelState(config, tensors)
