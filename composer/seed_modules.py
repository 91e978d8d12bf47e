"""Seeds as runtime modules: `SeededLayer` wraps a host linear layer (`base_layer`, as PEFT
names it) and computes its seed's formula on every forward pass, with a settable `alpha` —
the unfolded model a training loop runs, and the reference every fold is checked against.

x is the layer's input, host(x) the host layer's output, seed tensors in nn.Linear's layout:
    delta   host(x) + α·(ΔW x + Δb)
    blend   (1 − α)·host(x) + α·(S x + s)
    lora    host(x) + α·s·B(A x)
    input   host(x + α·(L x + c))
    output  y + α·(L y + c),  y = host(x)
    router  (1 − α)·host(x) + α·Σₖ gₖ·(Wₖ x + bₖ)   (gₖ constants, or softmax(G x + g) per token)
    mlp     host(x) + α·down(act(up(x)))
The seed's tensors are its parameters, named as in the bank (`delta.weight`, `experts.0.weight`…).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from safetensors.torch import load as load_safetensors
from torch import nn
from transformers.activations import ACT2FN
from transformers.pytorch_utils import Conv1D

from weightbank.registry.errors import InputError
from weightbank.registry.peft_adapter import lora_scale
from weightbank.registry.safetensors_format import CANONICAL_KEY
from weightbank.registry.scaffolds import Seed, alpha_at

from .oracle import OracleContext
from .scaffolds import PlannedSeed, host_shape_problems, step_view
from .tasks import Task

M = TypeVar("M", bound=nn.Module)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An nn.Linear holding these tensors as its parameters (nothing initialised)."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias)
    return layer


class SeededLayer(nn.Module):
    """A host linear layer with one seed (see the module docstring for the formulas)."""

    def __init__(
        self, base_layer: nn.Module, kind: str, alpha: float, tensors: Mapping[str, torch.Tensor],
        options: Mapping[str, Any],
    ) -> None:  # fmt: skip
        super().__init__()
        self.base_layer = base_layer
        self.kind = kind
        self.alpha = alpha
        if kind in ("delta", "blend", "input", "output"):
            self.add_module(kind, _linear(tensors[f"{kind}.weight"], tensors.get(f"{kind}.bias")))
        elif kind == "lora":
            self.lora_A = _linear(tensors["lora_A.weight"])
            self.lora_B = _linear(tensors["lora_B.weight"])
            self.scale = lora_scale(options["lora_alpha"], options["r"], options["use_rslora"])
        elif kind == "router":
            count = sum(1 for role in tensors if role.startswith("experts.") and role.endswith(".weight"))
            self.experts = nn.ModuleList(
                _linear(tensors[f"experts.{k}.weight"], tensors.get(f"experts.{k}.bias")) for k in range(count)
            )
            if "gate.weight" in tensors:
                self.gate = _linear(tensors["gate.weight"], tensors.get("gate.bias"))
            else:
                like = tensors["experts.0.weight"]
                self.register_buffer("gates", torch.tensor(options["gates"], dtype=like.dtype, device=like.device))
        elif kind == "mlp":
            self.up = _linear(tensors["up.weight"], tensors.get("up.bias"))
            self.down = _linear(tensors["down.weight"], tensors.get("down.bias"))
            self.act = ACT2FN[options["activation"]]
        else:
            raise InputError(f"unknown seed kind {kind!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, kind = self.alpha, self.kind
        if kind == "input":
            return self.base_layer(x + alpha * self.get_submodule("input")(x))
        y = self.base_layer(x)
        if kind == "output":
            return y + alpha * self.get_submodule("output")(y)
        if kind in ("delta", "blend"):
            keep = 1.0 if kind == "delta" else 1.0 - alpha
            return keep * y + alpha * self.get_submodule(kind)(x)
        if kind == "lora":
            return y + (alpha * self.scale) * self.lora_B(self.lora_A(x))
        if kind == "mlp":
            return y + alpha * self.down(self.act(self.up(x)))
        outputs = torch.stack([expert(x) for expert in self.experts], dim=-1)  # router
        gates = self.get_buffer("gates") if hasattr(self, "gates") else self.gate(x).softmax(-1).unsqueeze(-2)
        return (1 - alpha) * y + alpha * (outputs * gates).sum(-1)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, alpha={self.alpha:g}"


def install(
    model: nn.Module, slot: str, kind: str, alpha: float, tensors: Mapping[str, torch.Tensor],
    options: Mapping[str, Any],
) -> SeededLayer:  # fmt: skip
    """Wrap the linear layer at `slot` in a SeededLayer (tensors on its device, in its dtype)."""
    parent_name, _, child = slot.rpartition(".")
    parent = model.get_submodule(parent_name)
    host = getattr(parent, child)
    if not isinstance(host, (nn.Linear, Conv1D)):
        raise InputError(f"{slot} is a {type(host).__name__}, not a linear layer: a seed cannot be attached to it")
    like = host.weight
    placed = {role: t.to(device=like.device, dtype=like.dtype) for role, t in tensors.items()}
    layer = SeededLayer(host, kind, alpha, placed, options)
    setattr(parent, child, layer)
    return layer


@dataclass(frozen=True)
class SeedAttachment:
    """A planned seed the build installs as a SeededLayer (see `model_state.Attachment`)."""

    seed: PlannedSeed

    @property
    def module(self) -> str:
        return self.seed.slot

    @property
    def tensors(self) -> Mapping[str, Task]:
        return self.seed.tensors

    def problems(self, tensors: Mapping[str, Task]) -> list[str]:
        return host_shape_problems(self.seed, dict(tensors))

    def install(self, model: Any, tensors: dict[str, Any]) -> None:
        seed = self.seed
        install(model, seed.slot, seed.kind, seed.alpha, tensors, seed.options)


def attach_from_store(model: M, step: dict[str, Any], context: OracleContext) -> M:
    """The oracle of a scaffold step: the step's seeds attached to a peer-built model, their
    tensors read straight from the store, their alpha evaluated as the step says."""
    for seed, alpha in oracle_seeds(step, context):
        tensors = {role: read_tensor(context, record.digest) for role, record in seed.tensors.items()}
        install(model, seed.slot, seed.kind, alpha, tensors, seed.options)
    return model


def oracle_seeds(step: dict[str, Any], context: OracleContext) -> list[tuple[Seed, float]]:
    """A scaffold step's seeds, each with the alpha it applies with, read for an oracle."""
    view, alpha, at = step_view(step, context.store.bank)
    return [(seed, alpha if alpha is not None else alpha_at(seed.alpha, at)) for seed in view.seeds.values()]


def read_tensor(context: OracleContext, digest: str) -> torch.Tensor:
    """A stored tensor object, verified, as a CPU tensor."""
    return load_safetensors(context.store.objects.read(digest))[CANONICAL_KEY]
