"""What operators see and return: the model as a config plus one task per tensor."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from weightbank.registry.banks import Bank, TensorRecord
from weightbank.registry.errors import WeightbankError

from .tasks import Load, Task


class Attachment(Protocol):
    """A runtime module an operator adds to the built model (`scaffold.attach`): not a
    checkpoint tensor, so folders and banks cannot hold it. The build computes its `tensors`
    in the model's dtype, on the device of its `module`, and calls `install`."""

    @property
    def module(self) -> str: ...

    @property
    def tensors(self) -> Mapping[str, Task]: ...

    def problems(self, tensors: Mapping[str, Task]) -> list[str]:
        """Why it does not fit the composed model's final tensors (empty if it does)."""
        ...

    def install(self, model: Any, tensors: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class ModelState:
    """The model between two steps: its Hugging Face config (a plain dict), for every
    checkpoint tensor the task that computes it, and the runtime modules attached so far
    (operators that know nothing of them keep them: see `plan.apply_steps`)."""

    config: dict[str, Any]
    tensors: dict[str, Task]
    attachments: tuple[Attachment, ...] = ()


class PlanProblem(WeightbankError):
    """Raised by an operator with every problem it found in its step (outside a plan, e.g. when
    `expand` resolves its base, it reaches the user as one error line like any other)."""

    def __init__(self, *problems: str) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


class BankSource(Protocol):
    """How an operator reaches banks (resolving a ref records the bank as an input), and how
    it reports what the user must know about a step that is not refused (`warn`)."""

    def bank(self, ref: str, role: str, bank_type: str | None = None) -> Bank: ...

    def model(self, ref: str, role: str) -> ModelState:
        """The whole model a base or expansion bank stands for (an expansion's recipe applied)."""
        ...

    def warn(self, message: str) -> None: ...
    def describe(self, digest: str) -> str:
        """How messages name a manifest: `NAME@vN` where a ref points at it, else a short digest."""
        ...

    @property
    def base(self) -> Bank: ...


def load(record: TensorRecord) -> Load:
    """The task that reads a stored tensor."""
    return Load(record.digest, record.dtype, record.shape)


def check_parameters(step: dict[str, Any], allowed: set[str]) -> None:
    """Refuse parameters the operator does not know (typos would otherwise be ignored)."""
    unknown = sorted(set(step) - allowed - {"op"})
    if unknown:
        raise PlanProblem(f"unknown parameter(s) {', '.join(unknown)} (accepted: {', '.join(sorted(allowed))})")


FLOAT32_MAX = 3.4028234663852886e38


def float32_number(value: Any, what: str) -> float:
    """A step's number that the float32 arithmetic can hold (finite, not a bool, |x| ≤ 3.4e38)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlanProblem(f"{what} must be a finite number, got {value!r}")
    if abs(value) > FLOAT32_MAX:
        raise PlanProblem(f"{what} is {value!r}, beyond what float32 arithmetic can hold (±3.4e38)")
    return float(value)
