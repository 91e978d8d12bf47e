"""Expansion banks: model growth stored as a recipe, costing almost no bytes until trained.

`expand` stores a bank of type `expansion` that holds the growth steps (the recipe), the
target config and no tensors; its parent is the base. Composing it runs the recipe on the
base lazily, tensor by tensor. After training the grown model, ingesting it
`--as-version-of` the expansion stores only the tensors that differ from what the recipe
computes (by digest), as a new version whose parents are the base and the recipe version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightbank.registry.banks import Parent, TensorRecord, new_bank_manifest
from weightbank.registry.errors import InputError
from weightbank.registry.ingest import scan_folder
from weightbank.registry.manifests import canonical_json
from weightbank.registry.names import check_ref_name
from weightbank.registry.naming import with_article
from weightbank.registry.objects import tensor_object_digest
from weightbank.registry.provenance import new_activity
from weightbank.registry.refs import RefEntry
from weightbank.registry.store import Store

from .dtypes import to_torch
from .executor import Executor
from .plan import Plan, make_plan, resolve_base
from .tasks import Load, Target
from .write import tensor_bytes


@dataclass(frozen=True)
class ExpansionResult:
    """A recorded expansion bank version."""

    name: str
    version: int
    digest: str
    steps: list[dict[str, Any]]
    parameters: int
    tensors: int
    new_objects: int
    manifest_bytes: int


def expand(store: Store, ref: str, name: str, steps: list[dict[str, Any]], *, message: str = "") -> ExpansionResult:
    """Record `steps` applied to bank `ref` (a base, or an expansion to grow further) as an
    expansion bank `name`. The whole plan is validated first; nothing is stored if it fails."""
    check_ref_name(name)
    base, previous = resolve_base(store, ref)
    recipe = [*(previous.document["recipe"]["steps"] if previous else []), *steps]
    plan = make_plan(store, {"mes_version": "1", "base": base.digest, "steps": recipe})
    parents = [Parent(base.digest, "base")] + ([Parent(previous.digest, "source")] if previous else [])
    manifest = new_bank_manifest(
        "expansion",
        tensors={},
        files={},
        parents=parents,
        activity=new_activity("expand", {"steps": steps}, message),
        recipe={"steps": recipe},
        config=plan.config,
    )
    entry, digest, size = _record(store, name, manifest, "expand", message)
    return ExpansionResult(name, entry.version, digest, recipe, plan.parameters(), 0, 0, size)


def ingest_trained(store: Store, folder: str | Path, name: str, *, message: str = "") -> ExpansionResult:
    """Ingest a trained grown model as the next version of expansion `name`, storing only the
    tensors whose bytes differ from the recipe's output."""
    current = store.bank(name)
    if current.type != "expansion":
        raise InputError(f"--as-version-of {name}: {name} is {with_article(current.type)} bank, not an expansion")
    base, _ = resolve_base(store, current.digest)
    recipe = current.document["recipe"]["steps"]
    plan = make_plan(store, {"mes_version": "1", "base": base.digest, "steps": recipe}, dtype="float32")
    scan = scan_folder(folder)
    if scan.kind != "base":
        raise InputError(f"{folder}: an adapter folder cannot be a version of an expansion")
    _check_same_tensors(plan, scan.shapes(), folder)
    executor = Executor(store, "cpu")
    records: dict[str, TensorRecord] = {}
    created = 0
    with store.backend.batch():
        for weight in scan.weights:
            for tensor, entry, data in scan.source.tensors(weight):
                trained = tensor_object_digest(entry.dtype, entry.shape, data)
                if trained == _recipe_digest(executor, plan.targets[tensor], entry.dtype):
                    continue
                put = store.objects.put_tensor(entry.dtype, entry.shape, data, digest=trained)
                created += put.created
                records[tensor] = TensorRecord(put.digest, entry.dtype, entry.shape, entry.nbytes)
    manifest = new_bank_manifest(
        "expansion",
        tensors=records,
        files={},
        parents=[Parent(base.digest, "base"), Parent(current.digest, "recipe")],
        activity=new_activity("ingest", {**scan.source.provenance(), "as_version_of": name}, message),
        recipe={"steps": recipe},
        config=scan.config,
    )
    entry, digest, size = _record(store, name, manifest, "ingest", message)
    return ExpansionResult(name, entry.version, digest, recipe, plan.parameters(), len(records), created, size)


def _check_same_tensors(plan: Plan, shapes: dict[str, tuple[int, ...]], folder: str | Path) -> None:
    expected = {name: target.shape for name, target in plan.targets.items()}
    if shapes != expected:
        missing = sorted(expected.keys() - shapes.keys())[:3]
        extra = sorted(shapes.keys() - expected.keys())[:3]
        other = sorted(n for n in expected.keys() & shapes.keys() if expected[n] != shapes[n])[:3]
        raise InputError(
            f"{folder}: not a trained version of this recipe's model (missing {missing}, unexpected {extra}, "
            f"other shapes {other})"
        )


def _recipe_digest(executor: Executor, target: Target, dtype: str) -> str:
    """The object digest the recipe's tensor would have in `dtype` (computed only when needed)."""
    if isinstance(target.task, Load) and target.task.dtype == dtype:
        return target.task.digest
    tensor = executor.compute(Target(target.task, dtype))
    assert tensor.dtype == to_torch(dtype)
    return tensor_object_digest(dtype, target.shape, tensor_bytes(tensor))


def _record(store: Store, name: str, manifest: dict[str, Any], action: str, message: str) -> tuple[RefEntry, str, int]:
    """Store the manifest and record it as the next version of `name`: (entry, digest, manifest bytes)."""
    digest = store.manifests.put(manifest)
    return store.record(name, digest, action=action, message=message), digest, len(canonical_json(manifest))
