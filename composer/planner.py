"""The growth planner: which growth steps bring a model closest to a parameter target.

Candidates — depth, FFN, heads, hidden alone, and pairs sharing the budget — are built by
running the real operators on the model description (no tensor is read), and counted
exactly from the resulting config (`analyze.count_parameters`). They are ranked by their
distance to the target; lossless ones carry no `lossy` flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weightbank.registry.errors import WeightbankError
from weightbank.registry.store import Store

from .analyze import count_parameters
from .architectures import Layout
from .hf_model import config_object
from .model_state import ModelState
from .plan import PlanError, Sources, apply_steps, resolve_base, starting_state

Step = dict[str, Any]
ROUND_TO = 64  # widths are rounded to multiples of this (hardware-friendly)
AXES = ("depth", "ffn", "heads", "hidden")
MAX_NEW_GROUPS = 64


@dataclass(frozen=True)
class Candidate:
    """One way to grow: its steps, the exact parameter count, and how far from the target."""

    steps: list[Step]
    parameters: int
    target: int
    lossless: bool

    @property
    def error(self) -> float:
        return (self.parameters - self.target) / self.target

    def describe(self) -> str:
        parts = []
        for step in self.steps:
            args = ", ".join(f"{k}={v}" for k, v in step.items() if k != "op")
            parts.append(f"{step['op']}({args})")
        return " + ".join(parts)


class _Grower:
    """Applies candidate steps to the model description, counting parameters."""

    def __init__(self, store: Store, ref: str) -> None:
        base, expansion = resolve_base(store, ref)
        self.sources = Sources(store, base)
        problems: list[str] = []
        self.state = starting_state(base, expansion, self.sources, problems)
        if problems:
            raise PlanError(problems)

    def grow(self, steps: list[Step], state: ModelState | None = None) -> ModelState | None:
        """The grown description, or None if an operator or transformers' config refuses it."""
        problems: list[str] = []
        grown = apply_steps(state or self.state, steps, self.sources, problems)
        if problems:
            return None
        try:
            config_object(grown.config)
        except WeightbankError:
            return None
        return grown


def _best(budget_of: Callable[[int], int], low: int, high: int, target: int) -> int:
    """The value in [low, high] (a non-decreasing count) whose count is closest to target."""
    while low < high:
        middle = (low + high) // 2
        if budget_of(middle) < target:
            low = middle + 1
        else:
            high = middle
    return min((v for v in (low - 1, low) if v >= 0), key=lambda v: abs(budget_of(v) - target))


def _single_steps(grower: _Grower, state: ModelState, target: int) -> dict[str, Step]:
    """For each growth axis, the step that alone comes closest to `target` from `state`."""
    layout = Layout(state.config)
    counted = count_parameters(state.config)
    found: dict[str, Step] = {}

    def count(steps: list[Step]) -> int:
        grown = grower.grow(steps, state)
        return count_parameters(grown.config) if grown else -1

    layers = layout.value("layers")
    per_layer = count([{"op": "expand.depth", "layers": layers + 1}]) - counted
    if per_layer > 0:
        found["depth"] = {"op": "expand.depth", "layers": layers + max(1, round((target - counted) / per_layer))}
    inner = layout.value("intermediate")
    units = _best(lambda u: count([{"op": "expand.ffn", "size": inner + u * ROUND_TO}]), 1, 4096, target)
    found["ffn"] = {"op": "expand.ffn", "size": inner + max(1, units) * ROUND_TO}
    if layout.family.has_kv_heads:
        heads, group = layout.value("heads"), layout.value("heads") // layout.value("kv_heads")
        # Not every head count is valid (some configs need heads to divide hidden): scan them.
        options = [{"op": "expand.heads", "heads": heads + n * group} for n in range(1, MAX_NEW_GROUPS + 1)]
        counted_options = [(abs(n - target), i) for i, o in enumerate(options) if (n := count([o])) > 0]
        if counted_options:
            found["heads"] = options[min(counted_options)[1]]
    hidden = layout.value("hidden")
    multiple = not layout.zero_pads_exactly
    unit = hidden if multiple else ROUND_TO
    widths = lambda n: {"op": "expand.hidden", "size": hidden + n * unit}  # noqa: E731
    if count([widths(1)]) > 0:
        found["hidden"] = widths(max(1, _best(lambda n: count([widths(n)]), 1, 64 if multiple else 1024, target)))
    return {axis: step for axis, step in found.items() if count([step]) > 0}


def candidates(store: Store, ref: str, target: int) -> list[Candidate]:
    """Growth plans for bank `ref` towards `target` parameters, closest first."""
    grower = _Grower(store, ref)
    current = count_parameters(grower.state.config)
    plans: list[list[Step]] = [[step] for step in _single_steps(grower, grower.state, target).values()]
    halfway = current + (target - current) // 2
    for first_axis, first in _single_steps(grower, grower.state, halfway).items():
        grown = grower.grow([first])
        if grown is None:
            continue
        for second_axis, second in _single_steps(grower, grown, target).items():
            if AXES.index(second_axis) > AXES.index(first_axis):
                plans.append([first, second])
    results = []
    for steps in plans:
        grown = grower.grow(steps)
        if grown is not None:
            lossless = not any(step.get("lossy") for step in steps)
            results.append(Candidate(steps, count_parameters(grown.config), target, lossless))
    unique = {repr(c.steps): c for c in results}.values()
    return sorted(unique, key=lambda c: abs(c.parameters - target))
