"""`expand.ffn`: widen the MLP's intermediate size, keeping the function.

    - op: expand.ffn
      size: 1024            # the new intermediate size (larger than the current one)
      method: duplicate     # duplicate (Net2Net) | zero
      split: 0.5            # duplicate: share of a duplicated neuron's writer column kept by
                            # the original (the copy gets 1 − split)
      seed: 0               # which neurons are duplicated
      noise: 0.01           # optional symmetry breaking, exact: see below

Net2Net duplication copies neuron j's reader rows (gate and up, or GPT-2's c_fc column and
bias) and divides its writer column (down_proj / c_proj) between the copies, so the sum is
unchanged; unequal splits break the symmetry and stay exact. `zero` appends copies of
existing reader rows with zero writer columns (never both sides zero: the new neurons still
get gradients). Noise is added as +N / −N to the two writer columns of a duplicated pair
(whose activations are equal) or to the new reader rows of zero-initialised neurons, so the
function is unchanged either way.
"""

from __future__ import annotations

import random
from typing import Any

from ..architectures import Layout
from ..growth import (
    NoiseSpec,
    append,
    choice_parameter,
    int_parameter,
    noise_parameter,
    projections,
    seed_parameter,
    select_with_noise,
    source_is_oracle,
    with_config,
)
from ..model_state import BankSource, ModelState, PlanProblem, check_parameters
from ..tasks import Add, IndexSelect, Task, select

NAME = "expand.ffn"
oracle = source_is_oracle  # the step preserves the function


def duplicated_neurons(size: int, new_size: int, seed: int) -> list[int]:
    """Which existing neuron each new neuron copies: without repeats while that is possible."""
    rng = random.Random(seed)
    extra = new_size - size
    picks: list[int] = []
    while len(picks) < extra:
        picks.extend(rng.sample(range(size), min(size, extra - len(picks))))
    return picks


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    check_parameters(step, {"size", "method", "split", "seed", "noise"})
    layout = Layout(state.config)
    size, new_size = layout.value("intermediate"), int_parameter(step, "size")
    if new_size <= size:
        raise PlanProblem(f"size must exceed the current intermediate size {size}, got {new_size}")
    method = choice_parameter(step, "method", ("duplicate", "zero"), "duplicate")
    split = step.get("split", 0.5)
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split < 1:
        raise PlanProblem(f"split must be strictly between 0 and 1, got {split!r}")
    picks = duplicated_neurons(size, new_size, seed_parameter(step))
    index = tuple(range(size)) + tuple(picks)
    copies = [1] * size
    for j in picks:
        copies[j] += 1
    if method == "duplicate":
        factors = [_share(copies[j], split, first=True) for j in range(size)]
        factors += [_share(copies[j], split, first=False) for j in picks]
    else:
        factors = None
    noise = noise_parameter(step)

    tensors = dict(state.tensors)
    reader_noise = noise if method == "zero" else None
    for role, weight, bias in projections(state, layout, ("gate", "up")):
        tensors[weight] = select_with_noise(tensors[weight], layout.out_axis(role), index, size, reader_noise, weight)
        if bias is not None:
            tensors[bias] = select_with_noise(tensors[bias], 0, index, size, None, bias)
    axis = layout.in_axis("down")
    for _, weight, _ in projections(state, layout, ("down",)):
        if factors is None:
            tensors[weight] = append(tensors[weight], axis, new_size - size)
            continue
        grown = select(tensors[weight], axis, index, tuple(factors))
        tensors[weight] = _pair_noise(grown, axis, size, picks, noise, weight) if noise else grown
    return ModelState(with_config(state, **{layout.key("intermediate"): new_size}), tensors)


def _share(copies: int, split: float, *, first: bool) -> float:
    """Writer-column share of one copy: split / 1 − split for a pair, equal shares beyond."""
    if copies == 2:
        return split if first else 1.0 - split
    return 1.0 / copies


def _pair_noise(task: Task, axis: int, size: int, picks: list[int], noise: NoiseSpec, label: str) -> Task:
    """+N on a duplicated neuron's writer column, −N on its first copy's: their activations
    are equal, so the pair's contribution is unchanged."""
    total = size + len(picks)
    source, signs = list(range(total)), [0.0] * total
    for offset, j in enumerate(picks):
        if signs[j] == 0.0:
            signs[j], signs[size + offset], source[size + offset] = 1.0, -1.0, j
    return Add(task, IndexSelect(noise.task(task.shape, label), axis, tuple(source), tuple(signs)))
