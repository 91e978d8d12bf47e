"""`prism fit`: stream paired activations into normal equations, solve once, store the tiles.

The fit report (the bank's `grid.fit`) says how good the bridge is and how it compares:
train and held-out R² and relative residual, the dense least-squares fit on the same rows
(the reference the bridge must match within 1e-3 R²), the seed design's independent tiles
(what its per-tile fit would have given), the condition number, time and throughput.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from weightbank.registry.banks import Parent
from weightbank.registry.errors import InputError
from weightbank.registry.names import check_ref_name
from weightbank.registry.prism_bank import RawTensor, RecordedBank, record_prism_bank
from weightbank.registry.progress import byte_progress
from weightbank.registry.provenance import new_activity
from weightbank.registry.store import Store

from ..plan import Plan
from ..write import tensor_bytes
from .grid import TileGrid, choose_grid, parse_grid
from .moments import Moments, SplitMoments
from .pairs import PairSource
from .solve import backfit, dense_reference, independent_tiles, solve_joint
from .taps import Tap

METHODS = ("joint", "backfit")
DEFAULT_TILES = 16
# The stored bridge must match the dense least-squares fit on its training rows this closely.
R2_TOLERANCE = 1e-3


@dataclass(frozen=True)
class SideRecord:
    """One side of a bridge as the bank records it: tap, width and, when known, the model."""

    tap: Tap
    hidden: int
    plan: Plan | None = None

    def document(self) -> dict[str, Any]:
        record: dict[str, Any] = {"tap": str(self.tap), "hidden": self.hidden}
        if self.plan is not None:
            record["composition"] = self.plan.resolved_spec
        return record

    def parents(self, store: Store, role: str) -> list[Parent]:
        """The bank named (a plain ref) or the stored composition and its input banks."""
        if self.plan is None:
            return []
        spec = self.plan.resolved_spec
        if not spec["steps"]:
            return [Parent(spec["base"], role)]
        composition = store.manifests.put(spec)
        return [Parent(composition, role), *(Parent(d, f"{role}-{r}") for d, r in self.plan.inputs.items())]


@dataclass(frozen=True)
class FitResult:
    name: str
    version: int
    digest: str
    grid: dict[str, Any]
    new_objects: int

    @property
    def report(self) -> dict[str, Any]:
        return self.grid["fit"]


def tile_grid(out_features: int, in_features: int, tiles: int | None, grid: str | None) -> TileGrid:
    """`--grid RxC`, else `--tiles T` factored to the aspect ratio (default 16 tiles)."""
    if grid is not None and tiles is not None:
        raise InputError("give --tiles or --grid, not both")
    if grid is not None:
        return parse_grid(grid, out_features, in_features)
    return choose_grid(out_features, in_features, DEFAULT_TILES if tiles is None else tiles)


def accumulate(source: PairSource, device: str, show_progress: bool) -> tuple[Moments, Moments, float]:
    """Train and held-out moments of every pair the source yields, and the seconds it took."""
    start = time.perf_counter()
    moments = SplitMoments("cpu" if device == "auto" else device)
    with byte_progress(source.total_bytes, "pairs", show_progress) as advance:
        for batch in source.batches():
            if batch.x.shape[1] != source.in_features or batch.z.shape[1] != source.out_features:
                raise InputError(
                    f"activations are {batch.x.shape[1]} → {batch.z.shape[1]} wide, expected "
                    f"{source.in_features} → {source.out_features}"
                )
            moments.add(batch.x, batch.z, batch.heldout)
            advance(batch.bytes)
    train, heldout = moments.splits()
    return train, heldout, time.perf_counter() - start


def stored(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W and b as the bank keeps them (float32), back in float64 for measuring."""
    return weight.float().double(), bias.float().double()


def quality(moments: Moments, weight: torch.Tensor, bias: torch.Tensor) -> dict[str, float] | None:
    return moments.quality(weight, bias).to_document() if moments.rows else None


def raw(tensor: torch.Tensor) -> RawTensor:
    return RawTensor("F32", tuple(tensor.shape), tensor_bytes(tensor.float()))


def fit(
    store: Store,
    name: str,
    source: PairSource,
    sides: tuple[SideRecord, SideRecord],
    *,
    tiles: int | None = None,
    grid: str | None = None,
    ridge: float = 0.0,
    method: str = "joint",
    device: str = "cpu",
    parameters: dict[str, Any] | None = None,
    message: str = "",
    show_progress: bool = False,
) -> FitResult:
    """Fit z = W·x + b on `source`'s pairs by least squares (ridge λ) and record it as the next
    version of prism bank `name`. Every check on the input happens before any row is summed;
    nothing is written unless the fit succeeds."""
    check_ref_name(name)
    store.check_type(name, "prism")  # before any work: a typo must not end with a refusal to record
    if method not in METHODS:
        raise InputError(f"--method {method!r}: choose joint or backfit")
    if not ridge >= 0:
        raise InputError(f"--ridge must be a non-negative number, not {ridge}")
    for role, side, width in zip(("source", "target"), sides, (source.in_features, source.out_features), strict=True):
        if side.hidden != width:
            raise InputError(
                f"the {role} activations are {width} wide, but the {role} model has hidden size {side.hidden}"
            )
    layout = tile_grid(source.out_features, source.in_features, tiles, grid)
    train, heldout, collect_seconds = accumulate(source, device, show_progress)

    start = time.perf_counter()
    centred = train.centred()
    report: dict[str, Any] = {"method": method}
    if method == "joint":
        weight = solve_joint(centred, ridge)
    else:
        result = backfit(centred, layout, ridge)
        weight = result.weight
        report.update(sweeps=result.sweeps, converged=result.converged)
    weight, bias = stored(weight, centred.bias(weight))
    solve_seconds = time.perf_counter() - start

    start = time.perf_counter()
    reference, condition = dense_reference(centred, ridge)
    seed = independent_tiles(centred, layout, ridge)
    report.update(
        rows={"train": train.rows, "heldout": heldout.rows},
        pairing=source.pairing,
        ridge=ridge,
        accumulation="float64",
        train=quality(train, weight, bias),
        heldout=quality(heldout, weight, bias),
        dense_lstsq=quality(train, reference, centred.bias(reference)),
        independent_tiles={
            "summed": quality(train, seed, centred.bias(seed)),
            "averaged": quality(train, seed / layout.cols, centred.bias(seed / layout.cols)),
        },
        condition_number=condition,
    )
    seconds = {"collect": collect_seconds, "solve": solve_seconds, "report": time.perf_counter() - start}
    report.update(
        seconds={**seconds, "total": sum(seconds.values())},
        samples_per_second=(train.rows + heldout.rows) / max(collect_seconds + solve_seconds, 1e-9),
    )
    report["warnings"] = _warnings(report)
    document = {**layout.to_document(), "source": sides[0].document(), "target": sides[1].document(), "fit": report}
    parents = [*sides[0].parents(store, "source"), *sides[1].parents(store, "target")]
    activity = new_activity(
        "prism.fit",
        {"method": method, "ridge": ridge, "grid": f"{layout.rows}x{layout.cols}", **(parameters or {})},
        message,
    )
    recorded = record_bridge(store, name, layout, weight, bias, document, parents, activity, "prism.fit", message)
    return FitResult(name, recorded.entry.version, recorded.digest, document, recorded.new_objects)


def _warnings(report: dict[str, Any]) -> list[str]:
    found = []
    gap = report["dense_lstsq"]["r2"] - report["train"]["r2"]
    if gap > R2_TOLERANCE:
        found.append(
            f"train R² is {gap:.2e} below the dense least-squares fit (tolerance {R2_TOLERANCE:g})"
            + (": the ridge costs that much" if report["ridge"] else "")
        )
    if report.get("converged") is False:
        found.append(f"backfit stopped after {report['sweeps']} sweeps without converging")
    if report["condition_number"] is None or report["condition_number"] > 1e12:
        found.append("the source activations are nearly singular: the solution is sensitive; consider --ridge")
    return found


def record_bridge(
    store: Store,
    name: str,
    layout: TileGrid,
    weight: torch.Tensor,
    bias: torch.Tensor,
    document: dict[str, Any],
    parents: list[Parent],
    activity: dict[str, Any],
    action: str,
    message: str,
) -> RecordedBank:
    return record_prism_bank(
        store,
        name,
        grid_tensor=raw(layout.to_tiles(weight)),
        bias=raw(bias),
        grid=document,
        parents=parents,
        activity=activity,
        action=action,
        message=message,
    )
