"""`merge.dare`: DARE drop-and-rescale (Yu et al. 2023) — mergekit's `dare_ties` / `dare_linear`.

    - op: merge.dare               # the composition's base is the base model
      combine: ties                # ties: TIES sign election (dare_ties) | linear (dare_linear)
      seed: 0                      # the random stream (default 0); same seed, same model
      models:
        - {bank: math@v1, weight: 0.6, density: 0.5}
        - {bank: code@v1, weight: 0.4, density: 0.5}
      rescale: true                # L1-rescale what is kept (default, as mergekit)
      normalize: false
      lambda: 1.0

Each task vector τᵢ = θᵢ − θ₀ keeps each entry with probability `density` and, with `rescale`,
is multiplied by ‖τᵢ‖₁ / ‖kept τᵢ‖₁ (mergekit 0.1.5's rescale, ≈ 1 / density); then the task
vectors are combined as `merge.ties` (`combine: ties`) or `merge.task_arithmetic` (`linear`) do.

The random stream: entry j of output tensor T from the model at position p (in `models:` or in
its slice's `sources:`) is kept iff u < density, where u is element j mod 2²⁰ of
`torch.rand(2²⁰, generator=torch.Generator().manual_seed(s))` and s is the first 8 bytes
(little-endian, >> 1) of BLAKE3("weightbank-dare/{seed}/{T}/{p}/{j // 2²⁰}"). It is drawn on
the CPU, so a merge is the same on every device, in any order and whatever else is merged.
mergekit draws `torch.bernoulli` from torch's global generator in its task-execution order
(`--random-seed`); its masks cannot be reproduced outside its executor, so "equal to mergekit"
means: mergekit given our masks computes our tensors (tested), and our masks keep each entry
with probability `density` and preserve the L1 norm (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from blake3 import blake3
from transformers import PreTrainedModel

from ..growth import choice_parameter, seed_parameter
from ..merge_parameters import BOOL, MergeMethod, Parameter
from ..merging import TensorMerge, plan_merge
from ..model_state import BankSource, ModelState
from ..oracle import OracleContext
from ..task_vectors import DensityTrim, Rescaled, l1_factor, plan_task_vectors
from ..tasks import Task
from .merge_ties import DENSITY, INT8_MASK, LAMBDA, WEIGHT

NAME = "merge.dare"
BLOCK = 1 << 20
COMBINE = {"ties": "dare_ties", "linear": "dare_linear"}
METHOD = MergeMethod(
    NAME,
    "dare_ties",
    (WEIGHT, DENSITY, Parameter("normalize", BOOL, False), LAMBDA, Parameter("rescale", BOOL, True), INT8_MASK),
    needs_base=True,
    extra_keys=("combine", "seed"),
)


@dataclass
class KeepStream:
    """Which entries of one model's task vector for one tensor DARE keeps (module docstring)."""

    seed: int
    tensor: str
    position: int
    density: float
    _block: tuple[int, torch.Tensor] | None = field(default=None, repr=False)

    def uniform(self, block: int) -> torch.Tensor:
        if self._block is None or self._block[0] != block:
            key = f"weightbank-dare/{self.seed}/{self.tensor}/{self.position}/{block}".encode()
            seed = int.from_bytes(blake3(key).digest()[:8], "little") >> 1
            self._block = (block, torch.rand(BLOCK, generator=torch.Generator().manual_seed(seed)))
        return self._block[1]

    def keep(self, magnitudes: torch.Tensor, span: slice) -> torch.Tensor:
        """The mask for the flat range `span` (on the device of `magnitudes`)."""
        stop = span.start + magnitudes.numel()
        parts = []
        for block in range(span.start // BLOCK, (stop - 1) // BLOCK + 1):
            low, high = max(span.start, block * BLOCK) - block * BLOCK, min(stop, (block + 1) * BLOCK) - block * BLOCK
            parts.append(self.uniform(block)[low:high] < self.density)
        return torch.cat(parts).to(magnitudes.device)


def keep_mask(seed: int, tensor: str, position: int, numel: int, density: float) -> torch.Tensor:
    """The whole flat keep mask of one model's task vector for `tensor` (for tests and oracles)."""
    return KeepStream(seed, tensor, position, density).keep(torch.empty(numel), slice(0, numel))


@dataclass(frozen=True)
class RandomTrim(DensityTrim):
    """DARE's drop of one task vector (the stream of `seed`, `tensor`, `position`), with
    mergekit's L1 rescale when asked."""

    seed: int
    tensor: str
    position: int

    @property
    def needs_statistics(self) -> bool:
        return self.rescale

    def prepare(self, delta: torch.Tensor | None) -> Rescaled:
        stream = KeepStream(self.seed, self.tensor, self.position, self.density)
        if delta is None:
            return Rescaled(stream.keep)
        magnitudes = delta.abs_()
        return Rescaled(stream.keep, l1_factor(magnitudes, stream.keep(magnitudes, slice(0, magnitudes.numel()))))


def apply(state: ModelState, step: dict[str, Any], source: BankSource) -> ModelState:
    consensus = choice_parameter(step, "combine", tuple(COMBINE), "ties") == "ties"
    seed = seed_parameter(step)

    def task(tensor: TensorMerge) -> Task:
        rescale = bool(tensor.parameters["rescale"])
        trims = [
            RandomTrim(float(c.parameters["density"]), rescale, seed, tensor.name, c.position) for c in tensor.others
        ]
        normalize, scale = tensor.parameters["normalize"], tensor.parameters["lambda"]
        return plan_task_vectors(tensor, trims, consensus=consensus, normalize=normalize, scale=scale)

    return plan_merge(state, step, source, METHOD, task)


def oracle(model: PreTrainedModel, step: dict[str, Any], context: OracleContext) -> PreTrainedModel:
    """mergekit's own `dare_ties` / `dare_linear` on the exported models, its random drop replaced by
    our stream (its own cannot be reproduced; see the module docstring)."""
    from ..mergekit_oracle import run_mergekit

    merge_method = COMBINE[choice_parameter(step, "combine", tuple(COMBINE), "ties")]
    return run_mergekit(model, step, context, METHOD, merge_method=merge_method, dare_seed=seed_parameter(step))
