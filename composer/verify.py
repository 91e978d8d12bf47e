"""`verify`: run a composed model against its oracle on fixed inputs.

The oracle is built by the peers from banks exported to a scratch folder: transformers'
`from_pretrained` of the base (or of `--against REF`), with every step's `oracle` applied —
PEFT's own merge for adapters, nothing for function-preserving growth, the unfolded seeds for
scaffold folds. The report is the max-abs difference of their logits (or last hidden states)
on the CPU, in float32 arithmetic. A step whose operator has a `peer_oracle` (a second
reference, such as PEFT's merge for lora seeds) is also compared with the oracle chain that has
that peer in the step's place (`others`).

Precision: against its own oracle, the composition is built with float32 weights. Against a
bank (`--against REF`), it is built at that bank's dtype (a bank `compose --name` wrote in
bfloat16 is compared with a bfloat16 composition: the same roundings), and both models then
run in float32. Memory: the two models are built one after the other, each freed once its
outputs are taken, so at most one model is held — in float32, 4 bytes per parameter, plus
the oracle's export in a scratch folder on disk.
A step that changes the function on purpose (context.rope) declares `probes`: input lengths
at which its oracle is measured against the model before it, reported as `effects`.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from weightbank.registry.banks import Bank
from weightbank.registry.errors import InputError
from weightbank.registry.naming import with_article
from weightbank.registry.progress import step_progress
from weightbank.registry.store import Store

from .build import build_model
from .dtypes import TARGET_DTYPES
from .executor import Executor
from .hf_model import config_object
from .operators import OPERATORS
from .oracle import OracleContext, Probe
from .plan import make_plan

DEFAULT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Effect:
    """What a step changes, measured at one input length (see `Probe`)."""

    step: str
    label: str
    tokens: int
    max_abs_diff: float
    tolerance: float | None

    @property
    def ok(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of one verification. `precision`: the weights' dtype and the arithmetic's."""

    max_abs_diff: float
    tolerance: float
    oracle: str
    inputs: list[int]
    warnings: list[str] = field(default_factory=list)  # the plan's: where the composition departs from a peer
    precision: str = "float32 weights, float32 arithmetic"
    against: str | None = None
    effects: list[Effect] = field(default_factory=list)  # what steps change on purpose (probes)
    others: list[tuple[str, float]] = field(default_factory=list)  # further oracles: (description, max-abs)

    @property
    def ok(self) -> bool:
        return self.worst_diff <= self.tolerance and all(effect.ok for effect in self.effects)

    @property
    def worst_diff(self) -> float:
        return max([self.max_abs_diff, *(diff for _, diff in self.others)])


def fixed_inputs(vocab_size: int, seed: int = 0, batch: int = 2, length: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def outputs_of(model: PreTrainedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Logits for language models, the last hidden state for encoders, in float32."""
    model = model.float()
    with torch.no_grad():
        result = model(tokens.to(model.device))
    value = result.logits if hasattr(result, "logits") else result.last_hidden_state
    return value.float().cpu()


def bank_dtype(bank: Bank) -> str:
    """The dtype a bank's floating-point tensors are stored in, as a composition dtype name
    (`bfloat16`); float32 where they are mixed or in a dtype compositions are not made in."""
    codes = {record.dtype for record in bank.tensors.values() if record.dtype in TARGET_DTYPES.values()}
    by_code = {code: name for name, code in TARGET_DTYPES.items()}
    return by_code[codes.pop()] if len(codes) == 1 else "float32"


def verify(
    store: Store,
    spec: Any,
    *,
    against: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    show_progress: bool = False,
) -> VerifyReport:
    """Compare the composed model with its oracle (see module docstring)."""
    dtype = "float32"
    if against is not None:
        compared = store.bank(against)
        if compared.type != "base" or compared.config is None:
            raise InputError(
                f"--against {against} is {with_article(compared.type)} bank: verify compares with a base model "
                "(compose it with --name first)"
            )
        dtype = bank_dtype(compared)
    plan = make_plan(store, spec, dtype=dtype)
    with (
        tempfile.TemporaryDirectory(prefix="weightbank-verify-") as scratch,
        step_progress(2, "verify", show_progress, unit="model") as advance,
    ):
        context = OracleContext(store, Path(scratch), plan.base.digest)
        oracle = context.load_model(against or plan.base.digest)
        effects: list[Effect] = []
        if against is None:
            for step in plan.steps:
                operator, before = OPERATORS[step["op"]], oracle
                oracle = operator.oracle(oracle, step, context)
                probes = getattr(operator, "probes", None)
                if probes is not None:
                    effects += [_measure(before, oracle, p) for p in probes(step, before.config.to_dict())]
                del before
        tokens = fixed_inputs(min(oracle.config.vocab_size, config_object(plan.config).vocab_size))
        expected = outputs_of(oracle, tokens)
        del oracle  # one model at a time
        gc.collect()
        advance(1)
        composed = build_model(plan, Executor(store), "cpu")
        actual = outputs_of(composed, tokens)
        del composed
        advance(1)
        others = [] if against else _peer_comparisons(plan.base.digest, plan.steps, context, actual, tokens)
    description = f"from_pretrained({against})" if against else _describe(plan.steps)
    precision = f"{dtype} weights, float32 arithmetic"
    diff = (actual - expected).abs().max().item()
    return VerifyReport(
        diff, tolerance, description, list(tokens.shape), plan.warnings, precision, against, effects, others
    )


def _apply_oracles(model: PreTrainedModel, steps: list[dict[str, Any]], context: OracleContext) -> PreTrainedModel:
    for step in steps:
        model = OPERATORS[step["op"]].oracle(model, step, context)
    return model


def _peer_comparisons(
    base: str, steps: list[dict[str, Any]], context: OracleContext, composed: torch.Tensor, tokens: torch.Tensor
) -> list[tuple[str, float]]:
    """For each step with a `peer_oracle`: the oracle chain with that peer in the step's place,
    built one model at a time."""
    found = []
    for number, step in enumerate(steps):
        peer = getattr(OPERATORS[step["op"]], "peer_oracle", None)
        if peer is None:
            continue
        replaced = peer(_apply_oracles(context.load_model(base), steps[:number], context), step, context)
        if replaced is not None:
            label, model = replaced
            outputs = outputs_of(_apply_oracles(model, steps[number + 1 :], context), tokens)
            del model
            found.append((f"step {number + 1}: {label}", (composed - outputs).abs().max().item()))
    return found


def _measure(before: PreTrainedModel, after: PreTrainedModel, probe: Probe) -> Effect:
    tokens = fixed_inputs(before.config.vocab_size, batch=1, length=probe.length)
    diff = (outputs_of(after, tokens) - outputs_of(before, tokens)).abs().max().item()
    return Effect(probe.step, probe.label, probe.length, diff, probe.tolerance)


def _describe(steps: list[dict[str, Any]]) -> str:
    return "from_pretrained(base)" + "".join(f" + {step['op']} oracle" for step in steps)
