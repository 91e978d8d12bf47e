"""`scaffold check`: per seed, whether it can fold into its host and why not, the alpha it
would fold with, and what it costs in bytes (the foldability gate)."""

from __future__ import annotations

from dataclasses import dataclass

from .scaffolds import DECISIONS, ScaffoldView, alpha_at, check_seed, describe_alpha, fold_blocker
from .store import Store


@dataclass(frozen=True)
class SeedCheck:
    """One seed as `scaffold check` reports it."""

    slot: str
    kind: str
    alpha: float
    alpha_text: str
    foldable: bool
    reason: str
    tensors: int
    bytes: int


@dataclass(frozen=True)
class ScaffoldCheck:
    """A scaffold bank's seeds against its host."""

    ref: str
    digest: str
    host: str
    host_ref: str
    decision: str | None
    seeds: list[SeedCheck]

    @property
    def foldable(self) -> bool:
        return all(seed.foldable for seed in self.seeds)


def check_scaffold(store: Store, ref: str) -> ScaffoldCheck:
    """Check every seed of scaffold `ref` against its host bank (which must be in the store)."""
    view = ScaffoldView(store.bank(ref), ref)
    host = store.bank(view.host)
    seeds = []
    for seed in view.seeds.values():
        misfits = check_seed(seed.slot, seed.kind, seed.shapes, seed.options, host, f"host {view.host_ref}")
        has_bias = f"{seed.slot}.bias" in host.tensors
        reason = (
            f"does not fit the host: {'; '.join(misfits)}"
            if misfits
            else fold_blocker(seed.kind, seed.shapes, has_bias)
        )
        seeds.append(
            SeedCheck(
                seed.slot, seed.kind, alpha_at(seed.alpha), describe_alpha(seed.alpha), reason is None,
                reason or "folds exactly", len(seed.tensors), seed.bytes,
            )
        )  # fmt: skip
    decision = view.decision
    return ScaffoldCheck(
        ref, view.bank.digest, view.host, view.host_ref, DECISIONS[decision["action"]] if decision else None, seeds
    )
