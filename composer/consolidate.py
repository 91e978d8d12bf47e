"""`consolidate`: average a bank's versions and prune the result, published atomically as
its next version — SleepTime's LOCK → EMA → PRUNE → SERIALIZE → COMMIT → UNLOCK on the store.

The head of the ref read at the start plays the lock: nothing is held, the commit is a
compare-and-swap. The composition (`consolidate.ema`, `consolidate.prune` steps) is computed
tensor by tensor and its objects are stored; then the new version is published as that head
+ 1 with a create-only write. If anyone published in between, the publish fails, nothing is
named, and the stored objects stay unnamed until `gc`.

What is appended has the type of what was consolidated: a base bank for base versions; an
expansion bank (same recipe, only the tensors that differ from the recipe's output) for
expansion versions. The EMA of adapter versions is a merged model, W + Σ wᵢ·ΔWᵢ, so it is a
base bank and needs a name of its own (`as_name`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from weightbank.registry.banks import Bank, FileRecord, Parent, TensorRecord, new_bank_manifest
from weightbank.registry.checkpoints import DEFAULT_METADATA, MODEL_CONFIG
from weightbank.registry.errors import ConflictError, InputError, NotFoundError
from weightbank.registry.names import check_ref_name
from weightbank.registry.progress import byte_progress
from weightbank.registry.provenance import new_activity
from weightbank.registry.store import Store
from weightbank.registry.version_sets import parse_versions

from .dtypes import is_floating
from .executor import Executor
from .hf_model import config_object
from .model_state import ModelState
from .operators import ema, prune
from .plan import Plan, Sources, apply_steps, make_plan, starting_state
from .tasks import Load, Task
from .write import tensor_bytes


@dataclass(frozen=True)
class ConsolidationInput:
    """A bank version the result was made from."""

    ref: str
    digest: str
    role: str  # ema | prune-parent
    weight: float | None = None  # its weight in the EMA


@dataclass(frozen=True)
class TensorPruning:
    """What pruning did to one tensor (`prune.TrimReport`) and the bytes it saved."""

    elements: int
    changed: int
    kept: int
    max_deviation: float
    rms_deviation: float
    bytes_saved: int


@dataclass(frozen=True)
class ConsolidationResult:
    """A consolidation: published (or planned, for a dry run)."""

    name: str
    version: int | None  # None for a dry run
    digest: str | None
    started_from: int | None  # the newest entry of the ref it was computed against (None: a new name)
    bank_type: str
    inputs: list[ConsolidationInput]
    tensors: int
    computed: int  # tensors computed rather than passed through by digest
    unchanged: int
    new_objects: int
    bytes_stored: int
    seconds: dict[str, float]
    pruning: dict[str, TensorPruning] = field(default_factory=dict)
    pruning_total: TensorPruning | None = None
    dry_run: bool = False


@dataclass(frozen=True)
class Consolidation:
    """What to do: an EMA over versions and/or a prune against a parent."""

    decay: float | None = None
    versions: str | list[int] | None = None
    keep: float | None = None
    threshold: float | None = None
    scope: str = "tensor"
    parent: str | None = None

    def steps(self, name: str) -> list[dict[str, Any]]:
        """The composition steps, every option combination checked."""
        steps: list[dict[str, Any]] = []
        if (self.decay is None) != (self.versions is None):
            raise InputError("--ema β and --versions A..B go together")
        if self.decay is not None:
            steps.append({"op": ema.NAME, "bank": name, "versions": parse_versions(self.versions), "decay": self.decay})
        if self.keep is not None and self.threshold is not None:
            raise InputError("give --prune-keep or --prune-threshold, not both")
        pruning = self.keep is not None or self.threshold is not None
        if pruning != (self.parent is not None):
            raise InputError("--prune-keep F (or --prune-threshold τ) and --parent REF go together")
        if pruning:
            rule = {"keep": self.keep} if self.keep is not None else {"threshold": self.threshold}
            steps.append({"op": prune.NAME, "parent": self.parent, **rule, "scope": self.scope})
        if not steps:
            raise InputError("nothing to do: give --ema β --versions A..B and/or --prune-keep F --parent REF")
        return steps


def consolidate(
    store: Store,
    name: str,
    what: Consolidation,
    *,
    message: str,
    as_name: str | None = None,
    dry_run: bool = False,
    show_progress: bool = False,
) -> ConsolidationResult:
    """Consolidate the versions of `name` (see module docstring) and append the result as the
    next version of `name`, or of `as_name`. ConflictError if that ref moved meanwhile."""
    start = time.perf_counter()
    target = check_ref_name(as_name or name)
    head = store.refs.resolve(check_ref_name(name), None)  # NotFoundError: unused, or removed
    entries = store.refs.versions(target)  # the newest entry of any kind (a tombstone too) is what we follow
    started = entries[-1] if entries else None
    steps = what.steps(name)
    averaging = steps[0]["op"] == ema.NAME
    source = store.bank(f"{name}@v{max(steps[0]['versions']) if averaging else head.version}")
    base, bank_type = _composition_base(store, name, source, as_name)
    if source.type == "adapter" and not averaging:  # prune the model the adapter makes
        steps.insert(0, {"op": "adapter.lora", "bank": f"{name}@v{head.version}"})
    if target != name:
        store.check_type(target, bank_type)  # before any work: the publish would refuse it
    plan = make_plan(store, {"mes_version": "1", "base": base, "steps": steps})
    inputs = _inputs(store, name, steps)
    planned = time.perf_counter()
    unchanged = sum(isinstance(t.task, Load) and t.task.dtype == t.dtype for t in plan.targets.values())
    result = ConsolidationResult(
        target, None, None, started, bank_type, inputs, len(plan.targets), len(plan.targets) - unchanged, unchanged,
        new_objects=0, bytes_stored=0, seconds={"plan": planned - start}, dry_run=dry_run,
    )  # fmt: skip
    if dry_run:
        return result
    executor = Executor(store, "cpu")
    records, fresh = _store_tensors(store, plan, executor, _recipe_tasks(store, plan), show_progress)
    stored = time.perf_counter()
    digest = store.manifests.put(_manifest(store, plan, bank_type, records, source, inputs, steps, message))
    version = started + 1 if started else 1
    try:
        store.record(target, digest, action="consolidate", message=message, version=version)
    except ConflictError:
        raise _lost_race(store, target, version, started) from None
    done = time.perf_counter()
    pruning = _pruning(plan, executor, fresh)
    return replace(
        result, version=version, digest=digest, new_objects=len(fresh),
        bytes_stored=sum(plan.targets[n].nbytes for n in fresh),
        seconds={"plan": planned - start, "compute": stored - planned, "publish": done - stored, "total": done - start},
        pruning=pruning, pruning_total=_total(pruning, plan) if _prunes(steps) else None,
    )  # fmt: skip


def _composition_base(store: Store, name: str, source: Bank, as_name: str | None) -> tuple[str, str]:
    """(the bank the composition starts from, the type of bank the result is)."""
    if source.type in ("base", "expansion"):
        return source.digest, source.type
    if source.type != "adapter":
        raise InputError(f"{name} is a {source.type} bank: consolidate works on base, expansion and adapter banks")
    if as_name is None:
        raise InputError(
            f"{name} is an adapter: the EMA of its merged deltas is a full model, so give it its own name with --as NEW"
        )
    bases = [p.digest for p in source.parents if p.role == "base"]
    if not bases:
        raise InputError(f"{name} records no base model to merge its versions into")
    return bases[0], "base"


def _inputs(store: Store, name: str, steps: list[dict[str, Any]]) -> list[ConsolidationInput]:
    found = []
    for step in steps:
        if step["op"] == ema.NAME:
            refs, weights = ema.versions_and_weights(step)
            found += [ConsolidationInput(r, store.resolve(r), ema.ROLE, w) for r, w in zip(refs, weights, strict=True)]
        else:
            found.append(ConsolidationInput(step["parent"], store.resolve(step["parent"]), prune.ROLE))
    return found


def _recipe_tasks(store: Store, plan: Plan) -> dict[str, Task]:
    """For a composition of an expansion: what its recipe alone computes, per tensor (what an
    expansion version leaves unstored). Empty otherwise."""
    if plan.expansion is None:
        return {}
    problems: list[str] = []
    sources = Sources(store, plan.base)
    state: ModelState = starting_state(plan.base, None, sources, problems)
    state = apply_steps(state, plan.expansion.document["recipe"]["steps"], sources, problems, "recipe step")
    return state.tensors  # the plan already applied this recipe without problems


def _store_tensors(
    store: Store, plan: Plan, executor: Executor, recipe: dict[str, Task], show_progress: bool
) -> tuple[dict[str, TensorRecord], set[str]]:
    """Every target into the store, computed one at a time: (records, names stored as new
    objects). Pass-through tensors keep their digest; tensors that are the recipe's own
    output are left out of an expansion."""
    records: dict[str, TensorRecord] = {}
    fresh: set[str] = set()
    total = sum(t.nbytes for t in plan.targets.values())
    with store.backend.batch(), byte_progress(total, "consolidate", show_progress) as advance:
        for name, target in plan.targets.items():
            advance(target.nbytes)
            task = target.task
            if recipe.get(name) == task:
                continue
            if isinstance(task, Load) and task.dtype == target.dtype:
                records[name] = TensorRecord(task.digest, target.dtype, target.shape, target.nbytes)
                continue
            data = tensor_bytes(executor.compute(target))
            report = prune.prune_reports(executor).get(name)
            if isinstance(task, prune.Trim) and report and report.fully_pruned and recipe.get(name) == task.parent:
                continue  # pruned back to the recipe's own output
            put = store.objects.put_tensor(target.dtype, target.shape, data)
            if put.created:
                fresh.add(name)
            records[name] = TensorRecord(put.digest, target.dtype, target.shape, target.nbytes)
    return records, fresh


def _manifest(
    store: Store,
    plan: Plan,
    bank_type: str,
    records: dict[str, TensorRecord],
    source: Bank,
    inputs: list[ConsolidationInput],
    steps: list[dict[str, Any]],
    message: str,
) -> dict[str, Any]:
    composition = store.manifests.put(plan.resolved_spec)
    parents = [Parent(composition, "composition"), *(Parent(d, role) for d, role in plan.inputs.items())]
    parameters = {"steps": steps, "inputs": [i.__dict__ for i in inputs], "composition": composition}
    activity = new_activity("consolidate", parameters, message)
    if bank_type == "expansion":
        assert plan.expansion is not None
        return new_bank_manifest(
            "expansion", tensors=records, files={}, parents=parents, activity=activity,
            recipe=plan.expansion.document["recipe"], config=plan.config,
        )  # fmt: skip
    config_bytes = config_object(plan.config).to_json_string(use_diff=True).encode("utf-8")
    config_put = store.objects.put(config_bytes)
    files = {**plan.files, MODEL_CONFIG: FileRecord(config_put.digest, len(config_bytes))}
    return new_bank_manifest(
        "base", tensors=records, files=files, parents=parents, activity=activity, config=plan.config,
        safetensors_metadata=source.document.get("safetensors_metadata", DEFAULT_METADATA),
    )  # fmt: skip


def _lost_race(store: Store, name: str, version: int, started: int | None) -> ConflictError:
    """The error of a publish that lost: who published first, and that nothing was named."""
    try:
        winner = store.refs.get(name, version)
        who = f" by {winner.agent} ({winner.action}, {winner.time})"
    except NotFoundError:
        who = ""
    since = f"v{started}" if started else "nothing"
    return ConflictError(
        f"{name} moved while consolidating: it was at {since} when consolidate started, and {name}@v{version} was "
        f"published{who}; nothing was published (the computed objects stay unnamed until gc) — run consolidate again"
    )


def _prunes(steps: list[dict[str, Any]]) -> bool:
    return any(step["op"] == prune.NAME for step in steps)


def _pruning(plan: Plan, executor: Executor, fresh: set[str]) -> dict[str, TensorPruning]:
    """Per pruned tensor: its TrimReport and the bytes it saved (a fully pruned tensor is the
    parent's object: nothing new stored)."""
    found = {}
    for name, report in prune.prune_reports(executor).items():
        saved = plan.targets[name].nbytes if report.fully_pruned and name not in fresh else 0
        found[name] = TensorPruning(
            report.elements, report.changed, report.kept, report.max_deviation, report.rms_deviation, saved
        )
    return found


def _total(pruning: dict[str, TensorPruning], plan: Plan) -> TensorPruning:
    """Over the whole model (every floating element; tensors equal to the parent's count
    as unchanged and undeviated)."""
    elements = sum(math.prod(t.shape) for t in plan.targets.values() if is_floating(t.dtype))
    squares = sum(p.rms_deviation**2 * p.elements for p in pruning.values())
    return TensorPruning(
        elements,
        sum(p.changed for p in pruning.values()),
        sum(p.kept for p in pruning.values()),
        max((p.max_deviation for p in pruning.values()), default=0.0),
        math.sqrt(squares / elements) if elements else 0.0,
        sum(p.bytes_saved for p in pruning.values()),
    )
