"""Shared by the growth operators: step parameters, symmetry-breaking noise, tensor names.

Every growth operator records the step it was given; its construction is in GROWTH.md and
docs/growth.md. Noise is opt-in (`noise: STD`, `seed: S`) and is placed where it keeps the
function exact wherever the construction allows it (inputs that see zeros, partner blocks
that cancel); `verify` reports the measured deviation either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from .architectures import Layout
from .model_state import ModelState, PlanProblem
from .oracle import OracleContext
from .tasks import Add, Concat, Fill, Noise, Slice, Task, select


def int_parameter(step: dict[str, Any], key: str) -> int:
    value = step.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanProblem(f"{key} must be an integer ≥ 1, got {value!r}")
    return value


def seed_parameter(step: dict[str, Any]) -> int:
    """`seed: S` (default 0)."""
    seed = step.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PlanProblem(f"seed must be an integer, got {seed!r}")
    return seed


def choice_parameter(step: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = step.get(key, default)
    if value not in choices:
        raise PlanProblem(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


@dataclass(frozen=True)
class NoiseSpec:
    """Gaussian noise N(0, std²); each tensor gets its own seed derived from `seed` and labels."""

    std: float
    seed: int

    def task(self, shape: tuple[int, ...], *labels: object) -> Noise:
        digest = hashlib.blake2b(repr((self.seed, *labels)).encode(), digest_size=8).digest()
        return Noise(tuple(shape), self.std, int.from_bytes(digest, "little") >> 1)

    def add(self, task: Task, *labels: object) -> Task:
        return Add(task, self.task(task.shape, *labels))


def noise_parameter(step: dict[str, Any]) -> NoiseSpec | None:
    """`noise: STD` (and optional `seed: S`, default 0) → a NoiseSpec; absent → None."""
    if "noise" not in step:
        return None
    std = step["noise"]
    if isinstance(std, bool) or not isinstance(std, (int, float)) or std <= 0:
        raise PlanProblem(f"noise must be a positive standard deviation, got {std!r}")
    return NoiseSpec(float(std), seed_parameter(step))


def weight_and_bias(state: ModelState, layout: Layout, role: str, layer: int | None = None) -> tuple[str, str | None]:
    """Names of a linear's weight and (if the model has it) bias."""
    module = layout.module(role, layer)
    bias = f"{module}.bias"
    return f"{module}.weight", bias if bias in state.tensors else None


def projections(state: ModelState, layout: Layout, roles: Iterable[str]) -> Iterator[tuple[str, str, str | None]]:
    """(role, weight name, bias name or None) of every block's projections in `roles` that the
    architecture has, layer by layer."""
    for layer in range(layout.value("layers")):
        for role in roles:
            if layout.has(role):
                yield (role, *weight_and_bias(state, layout, role, layer))


def with_config(state: ModelState, **updates: Any) -> dict[str, Any]:
    """A copy of the config with `updates` applied."""
    return {**state.config, **updates}


def append(
    task: Task, axis: int, extra: int, fill: float = 0.0, noise: NoiseSpec | None = None, label: str = ""
) -> Task:
    """`task` followed by `extra` new entries along `axis`, all `fill` (plus noise if given)."""
    shape = list(task.shape)
    shape[axis] = extra
    new: Task = Fill(tuple(shape), fill, task.dtype)
    if noise is not None:
        new = noise.add(new, label)
    return Concat((task, new), axis)


def select_with_noise(
    task: Task, axis: int, index: tuple[int, ...], kept: int, noise: NoiseSpec | None, label: str
) -> Task:
    """`task` indexed along `axis`; with noise, added to the entries after the first `kept`
    (the copies), never to the originals."""
    grown = select(task, axis, index)
    if noise is None:
        return grown
    return Concat((Slice(grown, axis, 0, kept), noise.add(Slice(grown, axis, kept, len(index)), label)), axis)


def source_is_oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """A function-preserving step: the source model is the oracle (noise and lossy variants
    are measured against it)."""
    return model
