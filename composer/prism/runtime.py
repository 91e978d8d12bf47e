"""Running a stored bridge: `load_bridge` (the map as a module) and `compose_bridged`
(model A up to its tap → bridge → model B from its tap on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from weightbank.registry.errors import InputError
from weightbank.registry.prism_bank import BIAS_TENSOR, GRID_TENSOR, prism_bank
from weightbank.registry.store import Store

from ..api import Spec, _store, build_planned, load_tokenizer
from ..architectures import Layout
from ..executor import Executor
from ..plan import make_plan
from .grid import TileGrid
from .taps import Tap, parse_tap, run_from_tap, run_to_tap


class PrismBridge(nn.Module):
    """z = W·x + b for a stored tile grid.

    The `[T, tile_rows, tile_cols]` grid is rearranged once, at load, into the dense W
    (a permutation of the same numbers, no arithmetic), so `forward` is one matmul — the
    very computation `nn.Linear` with that W does, bit for bit."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, grid: TileGrid, taps: tuple[str, str]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.grid = grid
        self.source_tap, self.target_tap = taps

    @property
    def in_features(self) -> int:
        return self.grid.in_features

    @property
    def out_features(self) -> int:
        return self.grid.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(self.weight.device, self.weight.dtype), self.weight, self.bias)

    def tiles(self) -> torch.Tensor:
        """The grid as stored: [T, tile_rows, tile_cols], edge tiles zero-padded."""
        return self.grid.to_tiles(self.weight.detach())

    def extra_repr(self) -> str:
        g = self.grid
        return (
            f"in_features={g.in_features}, out_features={g.out_features}, grid={g.rows}x{g.cols} "
            f"({g.tile_rows}x{g.tile_cols} tiles), taps={self.source_tap}->{self.target_tap}"
        )


def load_bridge(
    ref: str,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    store: str | Path | Store | None = None,
) -> PrismBridge:
    """The prism bank `ref` as a module on `device` (float32 as stored, unless `dtype`).

    Example:
        >>> bridge = load_bridge("llama-to-qwen@v1", device="cuda")  # doctest: +SKIP
        >>> z = bridge(hidden_a)                                      # doctest: +SKIP
    """
    resolved = _store(store)
    bank = prism_bank(resolved, ref)
    where = torch.device("cpu" if device == "auto" else device)
    executor = Executor(resolved, where)
    tensors = bank.tensors
    grid_document = bank.document["grid"]
    grid = TileGrid.from_document(grid_document)
    weight = grid.to_dense(executor.load(tensors[GRID_TENSOR].digest, where))
    bias = executor.load(tensors[BIAS_TENSOR].digest, where)
    if dtype is not None:
        weight, bias = weight.to(dtype), bias.to(dtype)
    taps = (grid_document["source"]["tap"], grid_document["target"]["tap"])
    return PrismBridge(weight, bias, grid, taps).eval()


class BridgedModel(nn.Module):
    """A up to its tap → bridge → B from its tap on; `forward` returns B's output (`.logits`).

    `tokenizer` is A's: inputs are A's token ids."""

    def __init__(
        self,
        source: PreTrainedModel,
        bridge: PrismBridge,
        target: PreTrainedModel,
        taps: tuple[Tap, Tap],
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.source, self.bridge, self.target = source, bridge, target
        self.source_tap, self.target_tap = taps
        self.tokenizer = tokenizer

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        hidden = run_to_tap(self.source, self.source_tap, input_ids, mask)
        return run_from_tap(self.target, self.target_tap, self.bridge(hidden), mask)


def bridge_taps(
    bridge: PrismBridge, source_config: dict[str, Any], target_config: dict[str, Any], labels: tuple[str, str]
) -> tuple[Tap, Tap]:
    """The bridge's taps in these two models, with their widths checked."""
    for role, config, label, width in (
        ("source", source_config, labels[0], bridge.in_features),
        ("target", target_config, labels[1], bridge.out_features),
    ):
        hidden = Layout(config).value("hidden")
        if hidden != width:
            raise InputError(f"{label} has hidden size {hidden}, but the bridge's {role} side is {width} wide")
    return (
        parse_tap(bridge.source_tap, source_config, "source", labels[0]),
        parse_tap(bridge.target_tap, target_config, "target", labels[1]),
    )


def compose_bridged(
    spec_a: Spec,
    bridge_ref: str,
    spec_b: Spec,
    *,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    store: str | Path | Store | None = None,
) -> BridgedModel:
    """Compose A and B (compositions or bank refs) and join them with the prism bank
    `bridge_ref` at its recorded taps. Every width and tap is checked before a tensor is read.

    Example:
        >>> model = compose_bridged("tiny-llama", "llama-to-qwen", "tiny-qwen")  # doctest: +SKIP
        >>> ids = model.tokenizer("hello world", return_tensors="pt").input_ids  # doctest: +SKIP
        >>> model(ids).logits.shape                                            # doctest: +SKIP
    """
    resolved = _store(store)
    bridge = load_bridge(bridge_ref, device=device, store=resolved)
    plan_a, plan_b = make_plan(resolved, spec_a, dtype=dtype), make_plan(resolved, spec_b, dtype=dtype)
    taps = bridge_taps(bridge, plan_a.config, plan_b.config, ("model A", "model B"))
    source, target = build_planned(plan_a, resolved, device), build_planned(plan_b, resolved, device)
    return BridgedModel(source, bridge, target, taps, load_tokenizer(resolved, plan_a)).eval()
