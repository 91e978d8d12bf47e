"""`verify`: run a composed model against its oracle on fixed inputs.

The oracle is built by the peers from banks exported to a scratch folder: transformers'
`from_pretrained` of the base (or of `--against REF`), with every step's `oracle` applied —
PEFT's own merge for adapters, nothing for function-preserving growth. Both run in float32
on the CPU; the report is the max-abs difference of their logits (or last hidden states).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from weightbank.registry.store import Store

from .build import build_model
from .executor import Executor
from .operators import OPERATORS
from .oracle import OracleContext
from .plan import make_plan

DEFAULT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of one verification."""

    max_abs_diff: float
    tolerance: float
    oracle: str
    inputs: list[int]
    warnings: list[str] = field(default_factory=list)  # the plan's: where the composition departs from a peer

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def fixed_inputs(vocab_size: int, seed: int = 0, batch: int = 2, length: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def outputs_of(model: PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for language models, the last hidden state for encoders."""
    with torch.no_grad():
        result = model(tokens.to(model.device))
    value = result.logits if hasattr(result, "logits") else result.last_hidden_state
    return value.float().cpu()


def verify(
    store: Store, spec: Any, *, against: str | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> VerifyReport:
    """Compare the composed model with its oracle (see module docstring)."""
    plan = make_plan(store, spec, dtype="float32")
    composed = build_model(plan, Executor(store), "cpu")
    with tempfile.TemporaryDirectory(prefix="weightbank-verify-") as scratch:
        context = OracleContext(store, Path(scratch))
        oracle = context.load_model(against or plan.base.digest)
        if against is None:
            for step in plan.steps:
                oracle = OPERATORS[step["op"]].oracle(oracle, step, context)
        description = f"from_pretrained({against})" if against else _describe(plan.steps)
        tokens = fixed_inputs(min(oracle.config.vocab_size, composed.config.vocab_size))
        diff = (outputs_of(composed, tokens) - outputs_of(oracle, tokens)).abs().max().item()
    return VerifyReport(diff, tolerance, description, list(tokens.shape), plan.warnings)


def _describe(steps: list[dict[str, Any]]) -> str:
    return "from_pretrained(base)" + "".join(f" + {step['op']} oracle" for step in steps)
