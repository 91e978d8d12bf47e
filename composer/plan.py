"""Planning: a composition manifest → every target tensor as a task, validated up front.

Every ref is resolved, every step's operator run on the model *description* (config and
task expressions, no tensor data), and the result checked against the model transformers
would build from the target config. All problems — missing banks, unknown operators,
shapes that do not fit, unsupported adapter features, dtype trouble — are collected and
raised together as one PlanError before any tensor is read.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightbank.registry.banks import Bank, FileRecord
from weightbank.registry.checkpoints import MODEL_CONFIG
from weightbank.registry.errors import InputError, WeightbankError, WeightbankWarning
from weightbank.registry.naming import display_name, names_by_target, with_article
from weightbank.registry.safetensors_format import FLOAT_DTYPES
from weightbank.registry.store import Store

from .dtypes import TARGET_DTYPES, is_floating, target_code
from .model_state import Attachment, ModelState, PlanProblem, load
from .operators import OPERATORS
from .spec import load_spec
from .tasks import Load, ShapeError, Target, walk


class PlanError(WeightbankError):
    """A composition that cannot be built; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        super().__init__(f"composition refused ({count}): " + "; ".join(problems))
        self.problems = problems


class CompositionWarning(WeightbankWarning):
    """Issued by `compose` / `write` for each plan warning: a composition that is built but
    departs from what a peer computes (see the message), or carries a tensor the model ignores."""


@dataclass
class Sources:
    """Resolves refs for operators and records every bank used, with its role."""

    store: Store
    base_bank: Bank
    inputs: dict[str, str] = field(default_factory=dict)  # digest -> role
    resolved: dict[str, str] = field(default_factory=dict)  # ref as written -> digest
    warnings: list[str] = field(default_factory=list)
    _names: dict[str, list[str]] | None = field(default=None, repr=False)  # for messages, read on first use
    _loaded: dict[str, Bank] = field(default_factory=dict)  # digest -> bank, each read (and verified) once

    @property
    def base(self) -> Bank:
        return self.base_bank

    def describe(self, digest: str) -> str:
        if self._names is None:
            self._names = names_by_target(self.store)
        return display_name(self.store, digest, self._names)

    def _load(self, ref: str) -> Bank:
        digest = self.store.resolve(ref)
        if digest not in self._loaded:
            self._loaded[digest] = self.store.bank(digest)
        return self._loaded[digest]

    def bank(self, ref: str, role: str, bank_type: str | None = None) -> Bank:
        try:
            bank = self._load(ref)
        except WeightbankError as exc:
            raise PlanProblem(str(exc)) from None
        if bank_type is not None and bank.type != bank_type:
            raise PlanProblem(f"{ref} is {with_article(bank.type)} bank, expected {with_article(bank_type)} bank")
        self.inputs.setdefault(bank.digest, role)
        self.resolved[ref] = bank.digest
        return bank

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def model(self, ref: str, role: str) -> ModelState:
        """The model a base or expansion bank stands for, as `starting_state` gives it."""
        try:
            base, expansion = resolve_base(self.store, self.bank(ref, role).digest, self._load)
        except WeightbankError as exc:
            raise PlanProblem(str(exc)) from None
        self.inputs.setdefault(base.digest, "base")
        problems: list[str] = []
        state = starting_state(base, expansion, self, problems)
        if problems:
            raise PlanProblem(*problems)
        return state


@dataclass
class Plan:
    """A validated composition: target config, one `Target` per tensor, files to carry."""

    spec: dict[str, Any]
    base: Bank
    expansion: Bank | None  # when the composition starts from an expansion bank
    steps: list[dict[str, Any]]  # every step applied: the expansion's recipe, then the spec's
    config: dict[str, Any]
    dtype: str  # target dtype name, e.g. "bfloat16"
    targets: dict[str, Target]
    files: dict[str, FileRecord]
    inputs: dict[str, str]  # every input bank: digest -> role
    resolved_spec: dict[str, Any]  # the spec with every ref replaced by its digest
    warnings: list[str] = field(default_factory=list)
    attachments: tuple[Attachment, ...] = ()  # runtime modules the build adds (scaffold.attach)

    def reads(self) -> dict[str, int]:
        """Objects the plan reads: digest → payload bytes."""
        found: dict[str, int] = {}
        for target in self.targets.values():
            for task in walk(target.task):
                if isinstance(task, Load):
                    found[task.digest] = task.nbytes
        return found

    def parameters(self) -> int:
        """Elements in the floating-point target tensors."""
        return sum(math.prod(t.shape) for t in self.targets.values() if t.dtype in FLOAT_DTYPES)

    def summary(self) -> dict[str, Any]:
        """What `compose --dry-run` prints."""
        from .executor import peak_bytes_estimate

        return {
            "base": self.base.digest,
            "dtype": self.dtype,
            "target_config": self.config,
            "tensors": len(self.targets),
            "parameters": self.parameters(),
            "bytes_read": sum(self.reads().values()),
            "bytes_produced": sum(t.nbytes for t in self.targets.values()),
            "peak_memory_estimate": peak_bytes_estimate(self.targets.values()),
            "inputs": self.inputs,
            "steps": [step["op"] for step in self.steps],
            "warnings": self.warnings,
        }


def refuse_attachments(plan: Plan) -> None:
    """Folders and banks hold checkpoint tensors only: a plan with runtime modules cannot be written."""
    if plan.attachments:
        raise InputError(
            f"scaffold.attach keeps {len(plan.attachments)} seed(s) as runtime modules, which a from_pretrained folder "
            "or a base bank cannot hold: build the model (weightbank.compose, or compose --device without --out), "
            "or fold the seeds (scaffold.fold)"
        )


def resolve_base(store: Store, ref: str, load: Callable[[str], Bank] | None = None) -> tuple[Bank, Bank | None]:
    """(base bank, expansion bank or None) for the bank a composition starts from: an
    expansion bank stands for its base with its recipe applied. `load` reads a bank
    (default `store.bank`)."""
    load = load or store.bank
    named = load(ref)
    if named.type == "base" and named.config is not None:
        return named, None
    if named.type == "expansion":
        bases = [p.digest for p in named.parents if p.role == "base"]
        if not bases:
            raise PlanProblem(f"{ref}: expansion bank without a base parent")
        base = load(bases[0])
        if base.type == "base":
            return base, named
    raise PlanProblem(f"{ref} is {with_article(named.type)} bank, not a base model or an expansion of one")


def starting_state(base: Bank, expansion: Bank | None, sources: Sources, problems: list[str]) -> ModelState:
    """The model a composition starts from, as the plan sees it: the base's config and one
    Load per stored tensor, with the expansion's recipe applied and its trained tensors in place."""
    assert base.config is not None
    state = ModelState(copy.deepcopy(base.config), {name: load(r) for name, r in base.tensors.items()})
    if expansion is None:
        return state
    sources.inputs.setdefault(expansion.digest, "expansion")
    state = apply_steps(state, expansion.document["recipe"]["steps"], sources, problems, "recipe step")
    return _with_trained(state, expansion, problems)


def apply_steps(
    state: ModelState, steps: list[dict[str, Any]], sources: Sources, problems: list[str], label: str = "step"
) -> ModelState:
    """Run each step's operator; problems are appended (the failing step is skipped), and each
    warning an operator reports is labelled with its step."""
    for number, step in enumerate(steps, start=1):
        reported = len(sources.warnings)
        operator = OPERATORS.get(step["op"])
        if operator is None:
            problems.append(
                f"{label} {number}: unknown operator {step['op']!r} (known: {', '.join(sorted(OPERATORS))})"
            )
            continue
        try:
            applied = operator.apply(state, step, sources)
            state = applied if applied.attachments else dataclasses.replace(applied, attachments=state.attachments)
        except PlanProblem as exc:
            problems.extend(f"{label} {number} ({step['op']}): {p}" for p in exc.problems)
        except ShapeError as exc:
            problems.append(f"{label} {number} ({step['op']}): {exc}")
        sources.warnings[reported:] = [f"{label} {number} ({step['op']}): {w}" for w in sources.warnings[reported:]]
    return state


def _with_trained(state: ModelState, expansion: Bank, problems: list[str]) -> ModelState:
    """The expansion's stored tensors (changed by training) replace the recipe's."""
    tensors = dict(state.tensors)
    for name, record in expansion.tensors.items():
        if name not in tensors:
            problems.append(f"expansion tensor {name} is not in the recipe's model")
        elif tensors[name].shape != record.shape:
            problems.append(
                f"expansion tensor {name} is {list(record.shape)}, the recipe gives {list(tensors[name].shape)}"
            )
        else:
            tensors[name] = load(record)
    return ModelState(state.config, tensors)


def make_plan(store: Store, spec: Any, *, dtype: str | None = None) -> Plan:
    """Resolve, validate and plan a composition (see module docstring)."""
    document = load_spec(spec, store)
    problems: list[str] = []
    try:
        base, expansion = resolve_base(store, document["base"])
    except (WeightbankError, PlanProblem) as exc:
        raise PlanError([f"base: {exc}", *_step_problems_without_base(document, store)]) from None
    sources = Sources(store, base, {base.digest: "base"}, {document["base"]: (expansion or base).digest})
    recipe: list[dict[str, Any]] = expansion.document["recipe"]["steps"] if expansion is not None else []
    state = apply_steps(starting_state(base, expansion, sources, problems), document["steps"], sources, problems)
    problems.extend(problem for attached in state.attachments for problem in attached.problems(state.tensors))

    dtype_name = _target_dtype(dtype, document, (expansion or base).config or {}, problems)
    code = TARGET_DTYPES.get(dtype_name, "F32")
    targets = {
        name: Target(task, code if is_floating(task.dtype) else task.dtype) for name, task in state.tensors.items()
    }
    config = {**state.config, "dtype": dtype_name}
    config.pop("torch_dtype", None)
    warnings = list(sources.warnings)
    if not problems:
        from .hf_model import check_against_model

        problems.extend(check_against_model(config, targets, warnings))
    if problems:
        raise PlanError(problems)
    files = {path: record for path, record in base.files.items() if path != MODEL_CONFIG}
    resolved = _resolved_spec(document, sources.resolved, dtype_name)
    return Plan(
        document, base, expansion, [*recipe, *document["steps"]], config, dtype_name, targets, files, sources.inputs,
        resolved, warnings, state.attachments,
    )  # fmt: skip


def _step_problems_without_base(document: dict[str, Any], store: Store) -> list[str]:
    """Without a base nothing can be planned, but unknown operators and missing banks can
    still be reported."""
    problems = []
    for number, step in enumerate(document["steps"], start=1):
        if step["op"] not in OPERATORS:
            problems.append(f"step {number}: unknown operator {step['op']!r}")
        refs = [step["bank"]] if isinstance(step.get("bank"), str) else []
        adapters = step.get("adapters") if isinstance(step.get("adapters"), list) else []
        refs += [a if isinstance(a, str) else a.get("bank") for a in adapters if isinstance(a, (str, dict))]
        refs = [ref for ref in refs if isinstance(ref, str)]
        for ref in refs:
            try:
                store.resolve(ref)
            except WeightbankError as exc:
                problems.append(f"step {number} ({step['op']}): {exc}")
    return problems


def _target_dtype(requested: str | None, document: dict[str, Any], config: dict[str, Any], problems: list[str]) -> str:
    name = requested or document.get("dtype") or config.get("dtype") or config.get("torch_dtype")
    name = name if isinstance(name, str) else "float32"
    try:
        target_code(name)
    except WeightbankError as exc:
        problems.append(f"dtype: {exc}")
    return name


def _resolved_spec(document: dict[str, Any], resolved: dict[str, str], dtype: str) -> dict[str, Any]:
    """The manifest as it was built: refs replaced by digests, the dtype made explicit."""

    def swap(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {
                k: (resolved.get(v, v) if k in ("bank", "base") and isinstance(v, str) else swap(v, k))
                for k, v in value.items()
            }
        if key == "adapters" and isinstance(value, list):  # the short form: a list of refs
            return [resolved.get(v, v) if isinstance(v, str) else swap(v) for v in value]
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    result = swap(document)
    result["kind"] = "composition"
    result["dtype"] = dtype
    result.setdefault("metadata", {})["refs"] = {ref: digest for ref, digest in resolved.items()}
    return result
