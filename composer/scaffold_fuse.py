"""`scaffold fuse`: fold a scaffold's seeds into its host for good.

The composition `{base: host, steps: [scaffold.fold: the scaffold]}` is streamed into the
store as a new version of the host (or as a new bank, `as_name`): tensors the seeds do not
touch keep their digests, so only the changed tensors are stored. Its lineage names the
scaffold (role `scaffold`) and the host (role `base`). Then the decision is appended to the
scaffold's history (action `fuse`, the result in the decision record).
"""

from __future__ import annotations

from dataclasses import dataclass

from weightbank.registry.errors import InputError
from weightbank.registry.refs import parse_ref
from weightbank.registry.scaffold_check import check_scaffold
from weightbank.registry.scaffold_lifecycle import record_decision, undecided
from weightbank.registry.store import Store

from .plan import make_plan
from .tasks import Load
from .write import write_composition


@dataclass(frozen=True)
class FuseResult:
    """A fused host version and the scaffold version that records the decision."""

    scaffold: str
    scaffold_version: int
    name: str
    version: int
    digest: str
    tensors: int
    changed: int
    new_objects: int


def fuse(
    store: Store, name: str, *, as_name: str | None = None, message: str = "", show_progress: bool = False
) -> FuseResult:
    """Fold scaffold `name` into its host and register the result as the next version of the
    host's ref (refused if that ref has moved on since) or of `as_name`."""
    view = undecided(store, name)
    blocked = [seed for seed in check_scaffold(store, name).seeds if not seed.foldable]
    if blocked:
        first = blocked[0]
        raise InputError(
            f"{name} cannot be fused: seed {first.slot} ({first.kind}) {first.reason}"
            + (f" (and {len(blocked) - 1} more seeds)" if len(blocked) > 1 else "")
            + f"; persist it (weightbank scaffold persist {name}) to keep the seeds as runtime modules"
        )
    target = as_name or _host_name(store, view.host_ref, view.host)
    spec = {"mes_version": "1", "base": view.host, "steps": [{"op": "scaffold.fold", "bank": view.bank.digest}]}
    plan = make_plan(store, spec)
    changed = sum(1 for t in plan.targets.values() if not (isinstance(t.task, Load) and t.task.dtype == t.dtype))
    text = message or f"fused {name}"
    result = write_composition(store, plan, name=target, message=text, action="fuse", show_progress=show_progress)
    assert result.version is not None and result.digest is not None
    result_ref = f"{target}@v{result.version}"
    entry = record_decision(
        store, name, "fuse", message=message or f"fused into {result_ref}",
        outcome={"result": result.digest, "result_ref": result_ref},
    )  # fmt: skip
    return FuseResult(
        name, entry.version, target, result.version, result.digest, result.tensors, changed, result.new_objects
    )


def _host_name(store: Store, host_ref: str, host: str) -> str:
    """The ref the fused version goes to by default: the host's own, if it still points there."""
    spec = parse_ref(host_ref)
    if spec.name is None:
        raise InputError(f"the host was given as {host_ref}, not by name: name the fused bank with --as NEW")
    head = store.refs.head(spec.name)
    if head is None or head.manifest != host:
        now = f"{spec.name}@v{head.version}" if head else "gone"
        raise InputError(
            f"{spec.name} has moved on since the seeds were grafted onto {host_ref} (its head is {now}): "
            "name the fused bank with --as NEW"
        )
    return spec.name
