"""Shared by the growth operators: step parameters, symmetry-breaking noise, tensor names.

Every growth operator records the step it was given; its construction is in GROWTH.md and
docs/growth.md. Noise is opt-in (`noise: STD`, `seed: S`) and is placed where it keeps the
function exact wherever the construction allows it (inputs that see zeros, partner blocks
that cancel); `verify` reports the measured deviation either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from .architectures import Layout
from .model_state import ModelState, PlanProblem
from .tasks import Add, Noise, Task


def int_parameter(step: dict[str, Any], key: str, minimum: int = 1) -> int:
    value = step.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanProblem(f"{key} must be an integer ≥ {minimum}, got {value!r}")
    return value


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
    seed = step.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PlanProblem(f"seed must be an integer, got {seed!r}")
    return NoiseSpec(float(std), seed)


def weight_and_bias(state: ModelState, layout: Layout, role: str, layer: int | None = None) -> tuple[str, str | None]:
    """Names of a linear's weight and (if the model has it) bias."""
    module = layout.module(role, layer)
    bias = f"{module}.bias"
    return f"{module}.weight", bias if bias in state.tensors else None


def with_config(state: ModelState, **updates: Any) -> dict[str, Any]:
    """A copy of the config with `updates` applied (None values removed)."""
    config = dict(state.config)
    for key, value in updates.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config
