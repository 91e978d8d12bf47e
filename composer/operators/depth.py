"""`expand.depth`: insert identity blocks (LLaMA-Pro), or copy layers (lossy).

    - op: expand.depth
      layers: 12             # the new total, placed as LLaMA-Pro does…
      # placement: interior  # …or spread over the gaps between layers, never after the last
      # insert_every: 4      # …or one block after every 4 original layers
      # after: [3, 7]        # …or after these original layers (each new block copies that layer)
      method: identity       # identity (exact) | duplicate | solar (both lossy: ask lossy: true)
      noise: 0.01            # optional; added to the new blocks' readers only, so still exact
      seed: 0

An identity block is a copy of the layer before it with the projections that write into
the residual stream zeroed (o_proj and down_proj, with their biases; GPT-2's attn.c_proj
and mlp.c_proj): the block adds exactly zero, so the model computes what it did. Layers are
renumbered; num_hidden_layers (n_layer) and layer_types follow.

`layers: L + k` places the k blocks as LLaMA-Pro's block expansion does: the L layers form
k groups of L/k and a block follows the last layer of every group, the last group included
(32 → 40: after layers 3, 7, …, 31; 4 → 8: after every layer). When k does not divide L the
groups differ by one layer, larger groups first. `placement: interior` spreads the blocks
the same way over the L − 1 gaps between layers instead, so none follows the last layer.

`duplicate` places an unmodified copy of a layer where an identity block would go; `solar`
is SOLAR's depth up-scaling: the first ⌈N/2⌉ layers, then the last ⌊N/2⌋ (32 → 48: layers
0–23, then 8–31). Both change the function.
"""

from __future__ import annotations

from typing import Any

from ..architectures import Layout
from ..growth import choice_parameter, int_parameter, noise_parameter, source_is_oracle, with_config
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..tasks import Fill

NAME = "expand.depth"
oracle = source_is_oracle  # the step preserves the function
WRITERS = ("o", "down")


PLACEMENTS = ("llama-pro", "interior")


def insertion_points(layers: int, step: dict[str, Any]) -> list[int]:
    """Original layer indices after which a block is inserted (one entry per new block)."""
    given = [key for key in ("layers", "insert_every", "after") if key in step]
    if len(given) != 1:
        raise PlanProblem("give exactly one of layers (new total), insert_every or after")
    if "placement" in step and "layers" not in step:
        raise PlanProblem("placement applies to layers: N; insert_every and after place the blocks themselves")
    if "layers" in step:
        added = _added(layers, step)
        placement = choice_parameter(step, "placement", PLACEMENTS, "llama-pro")
        span = layers if placement == "llama-pro" else layers - 1
        if span < 1:
            raise PlanProblem("placement interior needs at least two layers (one gap between them)")
        return [-(-(j + 1) * span // added) - 1 for j in range(added)]  # the last layer of group j
    if "insert_every" in step:
        every = int_parameter(step, "insert_every")
        return list(range(every - 1, layers, every))
    after = step["after"]
    if not isinstance(after, list) or not after or not all(isinstance(i, int) and 0 <= i < layers for i in after):
        raise PlanProblem(f"after must list original layer indices in [0, {layers - 1}], got {after!r}")
    return sorted(after)


def _added(layers: int, step: dict[str, Any]) -> int:
    target = int_parameter(step, "layers")
    if target <= layers:
        raise PlanProblem(f"layers must exceed the current {layers}, got {target}")
    return target - layers


def layer_order(layers: int, step: dict[str, Any], method: str) -> list[tuple[int, bool]]:
    """The grown model's layers: (original layer it copies, whether it is a new layer)."""
    if method == "solar":
        if "layers" not in step or "placement" in step:
            raise PlanProblem("method solar takes layers: N (the new total) and nothing that places blocks")
        total = layers + _added(layers, step)
        first = total - total // 2
        if first > layers:
            raise PlanProblem(f"SOLAR up-scaling concatenates two slices of the {layers} layers: at most {2 * layers}")
        return [(i, False) for i in range(first)] + [(i, i < first) for i in range(layers - total // 2, layers)]
    points = insertion_points(layers, step)
    order: list[tuple[int, bool]] = []
    for layer in range(layers):
        order.append((layer, False))
        order.extend((layer, True) for point in points if point == layer)
    return order


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    check_parameters(step, {"layers", "insert_every", "after", "placement", "method", "lossy", "noise", "seed"})
    layout = Layout(state.config)
    method = choice_parameter(step, "method", ("identity", "duplicate", "solar"), "identity")
    noise = noise_parameter(step)
    if method != "identity" and not step.get("lossy"):
        raise PlanProblem(f"method {method} copies layers unchanged, which changes the function; set lossy: true")
    if method == "identity" and layout.family.placement != "pre":
        raise PlanProblem(
            f"{layout.family.name} is post-LN: a block's output is renormalised, so no identity block exists "
            "(method: duplicate or solar with lossy: true copy layers instead)"
        )
    layers = layout.value("layers")
    order = layer_order(layers, step, method)

    by_layer = layout.tensors_by_layer(state.tensors)
    writers = _writer_names(layout)
    tensors = {name: task for name, task in state.tensors.items() if layout.layer_of(name) is None}
    for target, (origin, new) in enumerate(order):
        for suffix, task in by_layer[origin].items():
            name = layout.layer_prefix(target) + suffix
            if new and method == "identity" and suffix in writers:
                task = Fill(task.shape, 0.0, task.dtype)
            elif new and noise is not None and suffix not in writers:
                task = noise.add(task, name)
            tensors[name] = task
    config = with_config(state, **{layout.key("layers"): len(order)})
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = [state.config["layer_types"][origin] for origin, _ in order]
    return ModelState(config, tensors)


def _writer_names(layout: Layout) -> set[str]:
    """Layer-relative names of the tensors that write into the residual stream."""
    return {f"{layout.family.tensors[role]}.{param}" for role in WRITERS for param in ("weight", "bias")}
