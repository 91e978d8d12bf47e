"""The growth planner: which growth steps bring a model closest to a parameter target.

Candidates — depth, FFN, heads, hidden alone, and pairs sharing the budget — grow one axis
by whole units (a layer, 64 FFN neurons, a KV group of heads, 64 hidden dims or a hidden
multiple). A parameter count is a polynomial of degree at most two in each axis's number of
units (`analyze.count_parameters` is a closed form), so the planner does not build
candidates to count them: it runs the real operators on the model description (no tensor is
read) at 1, 2 and 3 units, interpolates the exact polynomial, checks it at 4 units, and
solves it for the target. Pairs are interpolated the same way on a 3 × 3 grid. The search
therefore costs a fixed number of small growths (under 80) whatever the target, and the
counts it reports are exact; `expand` validates the chosen plan in full.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from itertools import product
from typing import Any

from weightbank.registry.errors import InputError, WeightbankError
from weightbank.registry.progress import Advance, step_progress
from weightbank.registry.store import Store

from .analyze import count_parameters
from .architectures import Layout
from .hf_model import config_object
from .model_state import ModelState
from .plan import PlanError, Sources, apply_steps, resolve_base, starting_state

Step = dict[str, Any]
ROUND_TO = 64  # widths grow by multiples of this (hardware-friendly)
AXES = ("depth", "ffn", "heads", "hidden")
MAX_NEW_GROUPS = 64
NODES = (1, 2, 3)  # units at which counts are measured; a degree-2 polynomial is fixed by three
CHECK = 4  # and checked at a fourth
PROBES = len(AXES) * (len(NODES) + 1) + len(AXES) * (len(AXES) - 1) // 2 * (len(NODES) ** 2 + 1)


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
        return describe_steps(self.steps)


def describe_steps(steps: list[Step]) -> str:
    """`expand.depth(layers=8) + expand.ffn(size=512)`."""
    parts = []
    for step in steps:
        args = ", ".join(f"{k}={v}" for k, v in step.items() if k != "op")
        parts.append(f"{step['op']}({args})")
    return " + ".join(parts)


class _Grower:
    """Counts the parameters of candidate steps on the model description."""

    def __init__(self, store: Store, ref: str, advance: Advance) -> None:
        base, expansion = resolve_base(store, ref)
        self.sources = Sources(store, base)
        problems: list[str] = []
        self.state = starting_state(base, expansion, self.sources, problems)
        if problems:
            raise PlanError(problems)
        self.layout = Layout(self.state.config)
        self.advance = advance

    def count(self, steps: list[Step]) -> int | None:
        """Exact parameters after `steps`, or None if an operator or transformers refuses them."""
        self.advance(1)
        problems: list[str] = []
        grown: ModelState = apply_steps(self.state, steps, self.sources, problems)
        if problems:
            return None
        try:
            config_object(grown.config)
        except WeightbankError:
            return None
        return count_parameters(grown.config)

    def step(self, axis: str, units: int) -> Step:
        """The step that grows `axis` by `units` whole units from the starting model."""
        value = self.layout.value
        if axis == "depth":
            return {"op": "expand.depth", "layers": value("layers") + units}
        if axis == "ffn":
            return {"op": "expand.ffn", "size": value("intermediate") + units * ROUND_TO}
        if axis == "heads":
            return {"op": "expand.heads", "heads": value("heads") + units * (value("heads") // value("kv_heads"))}
        unit = ROUND_TO if self.layout.zero_pads_exactly else value("hidden")  # else whole multiples
        return {"op": "expand.hidden", "size": value("hidden") + units * unit}

    def max_units(self, axis: str) -> int | None:
        return MAX_NEW_GROUPS if axis == "heads" else None


Polynomial = Callable[..., int]


def _lagrange(x: int, nodes: tuple[int, ...] = NODES) -> list[Fraction]:
    """Weights of the values at `nodes` that interpolate a polynomial at `x`."""
    weights = []
    for i, xi in enumerate(nodes):
        weight = Fraction(1)
        for j, xj in enumerate(nodes):
            if i != j:
                weight *= Fraction(x - xj, xi - xj)
        weights.append(weight)
    return weights


def _single(grower: _Grower, axis: str) -> Polynomial | None:
    """Parameters after growing `axis` by n units, as an exact function of n (None: refused)."""
    counts = [grower.count([grower.step(axis, n)]) for n in NODES]
    if None in counts:
        return None
    values = [int(c) for c in counts if c is not None]

    def polynomial(n: int) -> int:
        return int(sum(w * v for w, v in zip(_lagrange(n), values, strict=True)))

    return polynomial if grower.count([grower.step(axis, CHECK)]) == polynomial(CHECK) else None


def _pair(grower: _Grower, first: str, second: str) -> Polynomial | None:
    """Parameters after growing `first` by n and then `second` by m units, exactly (None: refused)."""
    grid: dict[tuple[int, int], int] = {}
    for n, m in product(NODES, NODES):
        count = grower.count([grower.step(first, n), grower.step(second, m)])
        if count is None:
            return None
        grid[n, m] = count

    def polynomial(n: int, m: int) -> int:
        total = Fraction(0)
        for (i, wn), (j, wm) in product(enumerate(_lagrange(n)), enumerate(_lagrange(m))):
            total += wn * wm * grid[NODES[i], NODES[j]]
        return int(total)

    checked = grower.count([grower.step(first, CHECK), grower.step(second, CHECK)])
    return polynomial if checked == polynomial(CHECK, CHECK) else None


def _closest_units(count: Callable[[int], int], target: int, limit: int | None) -> int:
    """The n ≥ 1 (at most `limit`) whose count, increasing in n, is closest to `target`."""
    high = 1
    while count(high) < target and (limit is None or high < limit):
        high = min(high * 2, limit) if limit is not None else high * 2
    low = 1
    while low < high:
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle + 1
        else:
            high = middle
    return min((n for n in (low - 1, low) if n >= 1), key=lambda n: abs(count(n) - target))


def candidates(store: Store, ref: str, target: int, *, show_progress: bool = False) -> list[Candidate]:
    """Growth plans for bank `ref` towards `target` parameters, closest first.

    Raises InputError if `target` is not above the model's current size (growth only adds)."""
    with step_progress(PROBES, "plan", show_progress, unit="probe") as advance:
        grower = _Grower(store, ref, advance)
        current = count_parameters(grower.state.config)
        if target <= current:
            raise InputError(
                f"target {target:,} parameters is not above {ref}'s current {current:,}: growth only adds parameters"
            )
        singles = {axis: poly for axis in AXES if (poly := _single(grower, axis)) is not None}
        found: dict[str, Candidate] = {}

        def add(steps: list[Step], parameters: int) -> None:
            found.setdefault(repr(steps), Candidate(steps, parameters, target, lossless=True))

        for axis, poly in singles.items():
            n = _closest_units(poly, target, grower.max_units(axis))
            add([grower.step(axis, n)], poly(n))
        halfway = current + (target - current) // 2
        for i, first in enumerate(AXES):
            for second in AXES[i + 1 :]:
                if first not in singles or second not in singles:
                    continue
                pair = _pair(grower, first, second)
                if pair is None:
                    continue
                n = _closest_units(singles[first], halfway, grower.max_units(first))
                m = _closest_units(lambda m: pair(n, m), target, grower.max_units(second))  # noqa: B023
                add([grower.step(first, n), grower.step(second, m)], pair(n, m))
    return sorted(found.values(), key=lambda c: abs(c.parameters - target))
