"""Merge parameters as mergekit (0.1.5) defines them: scalars, gradients, per-tensor filters.

A setting is
- a scalar: `0.5`, `true`;
- a gradient: a list of numbers interpolated over the layers of a slice — layer i of n gets
  t = i / (n − 1) (t = 1 when n = 1; embeddings, final norm and head get t = 0), and the value
  piecewise-linearly at t·(len − 1): `[0, 0.5, 1]` runs 0 → 1 over the layers. A list of
  booleans picks `values[int(t·(len − 1))]`;
- filtered: `{filter: self_attn, value: SETTING}`, or a list of them: the first entry whose
  `filter` is a substring of the tensor's name (or is `*` or absent) applies; when none does,
  the setting is as if absent.
A value is looked up in scopes, highest first — the model entry, its slice, the step (mergekit's
top-level `parameters:`) — and the first scope whose setting gives a value wins; else the
parameter's default; a parameter without a default is required.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

NUMBER = "number"
BOOL = "bool"


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Parameter:
    """One parameter of a merge method.

    `per_model` parameters take a value for each input model (mergekit's input / non-base
    scope); the others are shared by all inputs of a tensor. `on_base` says whether a per-model
    parameter applies to the base model too (mergekit's INPUT scope) or only to the others.
    """

    name: str
    kind: str  # NUMBER or BOOL
    default: Any = REQUIRED
    per_model: bool = False
    on_base: bool = False
    help: str = ""


@dataclass(frozen=True)
class MergeMethod:
    """A merge method's contract: its parameters and the inputs it takes per tensor."""

    op: str  # our operator name, e.g. merge.ties
    mergekit: str  # mergekit's merge_method name
    parameters: tuple[Parameter, ...]
    needs_base: bool = False  # the base model is an input (mergekit's BasePolicy.REQUIRED)
    min_inputs: int = 1  # counting the base
    max_inputs: int | None = None
    extra_keys: tuple[str, ...] = ()  # step keys of our own (seed, combine), validated by the operator

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    @property
    def shared(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if not p.per_model)

    @property
    def per_model(self) -> tuple[Parameter, ...]:
        return tuple(p for p in self.parameters if p.per_model)


def _scalar_ok(value: Any, kind: str) -> bool:
    if kind == BOOL:
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _gradient_problem(name: str, value: Any, kind: str) -> str | None:
    """Why a scalar or gradient value is malformed, or None."""
    what = "true or false" if kind == BOOL else "a number"
    if isinstance(value, list):
        if not value:
            return f"{name}: an empty list gives no value"
        if not all(_scalar_ok(v, kind) for v in value):
            return f"{name}: every entry of a gradient must be {what}, got {value!r}"
        return None
    if not _scalar_ok(value, kind):
        return f"{name} must be {what} or a list of them (a gradient), got {value!r}"
    return None


def setting_problems(name: str, setting: Any, kind: str) -> list[str]:
    """What is wrong with a setting (see the module docstring for the forms), if anything."""
    conditions = [setting] if isinstance(setting, dict) else setting
    if isinstance(conditions, list) and conditions and all(isinstance(c, dict) for c in conditions):
        problems = []
        for condition in conditions:
            unknown = sorted(set(condition) - {"filter", "value"})
            if unknown or "value" not in condition:
                problems.append(f"{name}: a filtered value is {{filter: TEXT, value: VALUE}}, got {condition!r}")
            elif condition.get("filter") is not None and not isinstance(condition["filter"], str):
                problems.append(f"{name}: filter must be text, got {condition['filter']!r}")
            elif problem := _gradient_problem(name, condition["value"], kind):
                problems.append(problem)
        return problems
    if isinstance(conditions, list) and any(isinstance(c, dict) for c in conditions):
        return [f"{name}: a list mixes filtered values with plain ones: {setting!r}"]
    problem = _gradient_problem(name, setting, kind)
    return [problem] if problem else []


def evaluate(setting: Any, tensor_name: str, t: float) -> Any:
    """The value a (well-formed) setting gives for a tensor at layer fraction `t`, or None;
    mergekit's `evaluate_setting`, operation for operation."""
    if isinstance(setting, dict):
        setting = [setting]
    if not isinstance(setting, list):
        return float(setting) if not isinstance(setting, bool) else setting
    if not setting:
        return None
    if all(not isinstance(entry, dict) for entry in setting):
        if any(isinstance(v, bool) for v in setting):
            return setting[int(t * (len(setting) - 1))]
        values = [float(v) for v in setting]
        scaled = t * (len(values) - 1)
        low = int(scaled)
        high = min(len(values) - 1, low + 1)
        fraction = scaled - low
        return (1 - fraction) * values[low] + fraction * values[high]
    for condition in setting:
        pattern = condition.get("filter")
        if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
            return evaluate(condition["value"], tensor_name, t)
    return None


def resolve(parameter: Parameter, scopes: Sequence[Mapping[str, Any]], tensor_name: str, t: float) -> Any:
    """The parameter's value for a tensor: the first scope that gives one, else the default
    (REQUIRED when there is none)."""
    for scope in scopes:
        if parameter.name in scope:
            value = evaluate(scope[parameter.name], tensor_name, t)
            if value is not None:
                return value
    return parameter.default
