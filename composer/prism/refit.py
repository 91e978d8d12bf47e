"""`prism refit`: refit some tiles of a stored bridge on new pairs, the other tiles frozen.

The refitted tiles are the exact minimum of Σ‖z − W·x − b‖² + λ‖W‖² over those tiles (and
the bias of their tile rows) given every other tile (`solve.refit_tiles`), so a refit never
raises that objective on the data it was given (beyond float rounding: refitting on the
very rows of an optimal fit moves R² in its 16th digit). The new grid is recorded as the
next version; the previous version becomes a parent (`previous`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from weightbank.registry.banks import Parent
from weightbank.registry.errors import InputError
from weightbank.registry.prism_bank import prism_bank
from weightbank.registry.provenance import new_activity
from weightbank.registry.store import Store

from .fit import accumulate, quality, record_bridge, stored
from .grid import TileGrid
from .pairs import PairSource
from .runtime import load_bridge
from .solve import refit_tiles


@dataclass(frozen=True)
class RefitResult:
    name: str
    version: int
    digest: str
    refit: dict[str, Any]
    new_objects: int


def refit(
    store: Store,
    name: str,
    tiles: list[int],
    source: PairSource,
    *,
    ridge: float | None = None,
    device: str = "cpu",
    parameters: dict[str, Any] | None = None,
    message: str = "",
    show_progress: bool = False,
) -> RefitResult:
    """Refit `tiles` of prism bank `name` (its latest version) on `source`'s pairs."""
    bank = prism_bank(store, name)
    document = bank.document["grid"]
    layout = TileGrid.from_document(document)
    if not tiles:
        raise InputError("--tiles: name at least one tile")
    rows_of = sorted({layout.position(tile)[0] for tile in tiles})
    if (source.in_features, source.out_features) != (layout.in_features, layout.out_features):
        raise InputError(
            f"the activations are {source.in_features} → {source.out_features} wide, but {name} bridges "
            f"{layout.in_features} → {layout.out_features}"
        )
    ridge = document["fit"]["ridge"] if ridge is None else ridge
    if not ridge >= 0:
        raise InputError(f"--ridge must be a non-negative number, not {ridge}")
    bridge = load_bridge(bank.digest, store=store, dtype=torch.float64, device=device)
    before_weight, before_bias = bridge.weight.detach(), bridge.bias.detach()

    train, heldout, collect_seconds = accumulate(source, device, show_progress)
    start = time.perf_counter()
    centred = train.centred()
    weight = refit_tiles(centred, layout, ridge, before_weight, tiles)
    weight, bias = stored(weight, _refitted_bias(centred.bias(weight), before_bias, layout, rows_of))
    report = {
        "tiles": sorted(set(tiles)),
        "rows": {"train": train.rows, "heldout": heldout.rows},
        "pairing": source.pairing,
        "ridge": ridge,
        "before": {
            "train": quality(train, before_weight, before_bias),
            "heldout": quality(heldout, before_weight, before_bias),
        },
        "after": {"train": quality(train, weight, bias), "heldout": quality(heldout, weight, bias)},
        "seconds": {"collect": collect_seconds, "solve": time.perf_counter() - start},
    }
    new_document = {**document, "refit": report}
    previous = [p for p in bank.parents if p.role != "previous"]
    parents = [*previous, Parent(bank.digest, "previous")]
    activity = new_activity("prism.refit", {"tiles": report["tiles"], "ridge": ridge, **(parameters or {})}, message)
    recorded = record_bridge(store, name, layout, weight, bias, new_document, parents, activity, "prism.refit", message)
    return RefitResult(name, recorded.entry.version, recorded.digest, report, recorded.new_objects)


def _refitted_bias(best: torch.Tensor, bias: torch.Tensor, layout: TileGrid, rows_of: list[int]) -> torch.Tensor:
    """The best bias in the refitted tile rows, the old bias elsewhere."""
    bias = bias.clone()
    for r in rows_of:
        bias[layout.row_block(r)] = best[layout.row_block(r)]
    return bias
