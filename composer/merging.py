"""Planning a `merge.*` step: which tensor of which model feeds each output tensor, with what
parameters — mergekit's planner, on the model description (no tensor is read).

    - op: merge.ties
      models:                      # whole models (mergekit `models:`) …
        - {bank: math@v1, weight: 0.6, density: 0.5}
        - {bank: code@v1, weight: 0.4, density: [0.3, 0.7]}
      # slices:                    # … or layer slices (mergekit `slices:`)
      #   - sources:
      #       - {bank: math@v1, layers: [0, 16], weight: 0.6}
      #       - {bank: code@v1, layers: [0, 16], weight: 0.4}
      #     density: 0.5           # slice-level parameters
      normalize: true              # step-level parameters: mergekit's top-level `parameters:`

The composition's base is the merge's base model (mergekit's `base_model`): an entry naming it
stands for the model built so far (the base, with any earlier steps applied); methods that need a
base get it as an input even when no entry names it, as mergekit adds it. Other entries are
models of the same architecture and shapes: base banks (ingested, or compositions registered with
`compose --name`) or expansion banks (their recipe composed lazily, like a composition's base).

Output layout (mergekit's): with `models:`, every layer l merges layer l of each model; with
`slices:`, output layers are the slices' layers in order, each merging layer `start + offset` of
every source of its slice. Embeddings come from the first slice's sources, the final norm and head
from the last slice's. Gradients see t = offset / (slice length − 1) for layer tensors, 0 for the
others. Every tensor the base has is merged — biases included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from weightbank.registry.errors import InputError

from .architectures import Layout
from .dtypes import is_floating
from .merge_parameters import REQUIRED, MergeMethod, Parameter, resolve, setting_problems
from .model_state import BankSource, ModelState, PlanProblem, check_parameters
from .tasks import Task

INPUT_ROLE = "merge-input"
_MAX_PROBLEMS_PER_MODEL = 3


@dataclass(frozen=True)
class Contribution:
    """One model's tensor for one output tensor, with its resolved per-model parameters."""

    model: str  # the model's ref as written in the step ("the base" when implicit)
    position: int  # its position in `models:` (or in its slice's `sources:`); -1 for an implicit base
    task: Task
    is_base: bool
    parameters: dict[str, Any]


@dataclass(frozen=True)
class TensorMerge:
    """Everything a method needs to plan one output tensor."""

    name: str
    contributions: tuple[Contribution, ...]
    parameters: dict[str, Any]  # the shared parameters' values for this tensor

    @property
    def base(self) -> Contribution | None:
        return next((c for c in self.contributions if c.is_base), None)

    @property
    def others(self) -> tuple[Contribution, ...]:
        return tuple(c for c in self.contributions if not c.is_base)


MergeTensor = Callable[[TensorMerge], Task]


@dataclass
class _Source:
    """An input model of one slice."""

    ref: str
    position: int
    is_base: bool
    digest: str
    tensors: dict[str, Task]
    layout: Layout
    settings: dict[str, Any]
    start: int
    stop: int


@dataclass
class _Slice:
    sources: list[_Source]
    settings: dict[str, Any]

    @property
    def length(self) -> int:
        return self.sources[0].stop - self.sources[0].start


def plan_merge(
    state: ModelState, step: dict[str, Any], source: BankSource, method: MergeMethod, merge_tensor: MergeTensor
) -> ModelState:
    """The model after a merge step: `merge_tensor` plans each output tensor's task."""
    names = {p.name for p in method.parameters}
    check_parameters(step, {"models", "slices", *names, *method.extra_keys})
    problems = _settings_problems(step, method.parameters, "step")
    if ("models" in step) == ("slices" in step):
        raise PlanProblem("give either models (whole models) or slices (layer ranges), as mergekit does")
    try:
        layout = Layout(state.config)
    except InputError as exc:
        raise PlanProblem(str(exc)) from None
    loader = _Loader(state, source, method, layout, problems)
    slices = loader.models(step["models"]) if "models" in step else loader.slices(step["slices"])
    for number, piece in enumerate(slices, start=1):
        _check_inputs(piece, method, number if "slices" in step else None, problems)
    if problems:
        raise PlanProblem(*problems)
    planner = _TensorPlanner(method, merge_tensor, step, problems)
    tensors = planner.plan(state, layout, slices)
    if problems:
        raise PlanProblem(*dict.fromkeys(problems))
    config = dict(state.config)
    if "slices" in step:
        config[layout.key("layers")] = sum(piece.length for piece in slices)
        if isinstance(config.get("layer_types"), list):
            config["layer_types"] = _layer_types(slices)
    return ModelState(config, tensors)


def _settings_problems(scope: dict[str, Any], parameters: tuple[Parameter, ...], where: str) -> list[str]:
    return [
        f"{where}: {problem}"
        for p in parameters
        if p.name in scope
        for problem in setting_problems(p.name, scope[p.name], p.kind)
    ]


class _Loader:
    """Turns the step's model entries into slices of resolved sources."""

    def __init__(
        self, state: ModelState, source: BankSource, method: MergeMethod, layout: Layout, problems: list[str]
    ) -> None:
        self.state, self.source, self.method, self.layout, self.problems = state, source, method, layout, problems
        self.banks: dict[str, tuple[bool, str, dict[str, Task], Layout] | None] = {}

    def models(self, entries: Any) -> list[_Slice]:
        if not isinstance(entries, list) or not entries:
            raise PlanProblem("models must be a non-empty list of {bank: REF, …parameters}")
        sources = [s for i, e in enumerate(entries) if (s := self._source(e, i, "models", False)) is not None]
        if self.method.needs_base and not any(s.is_base for s in sources):
            layers = self.layout.value("layers")
            base = self.source.base.digest
            sources.append(_Source("the base", -1, True, base, self.state.tensors, self.layout, {}, 0, layers))
        if sources and len({s.stop for s in sources}) > 1:
            counts = ", ".join(f"{s.ref}: {s.stop}" for s in sources)
            self.problems.append(f"models: the models have different numbers of layers ({counts}); use slices")
        return [_Slice(sources, {})]

    def slices(self, entries: Any) -> list[_Slice]:
        if not isinstance(entries, list) or not entries:
            raise PlanProblem("slices must be a non-empty list of {sources: [...], …parameters}")
        result = []
        for number, entry in enumerate(entries, start=1):
            where = f"slice {number}"
            if not isinstance(entry, dict) or not isinstance(entry.get("sources"), list) or not entry["sources"]:
                self.problems.append(f"{where}: a slice is {{sources: [{{bank: REF, layers: [START, STOP]}}, …]}}")
                continue
            unknown = sorted(set(entry) - {"sources"} - {p.name for p in self.method.parameters})
            if unknown:
                self.problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
            settings = {k: v for k, v in entry.items() if k != "sources"}
            self.problems.extend(_settings_problems(settings, self.method.parameters, where))
            sources = [s for i, e in enumerate(entry["sources"]) if (s := self._source(e, i, where, True)) is not None]
            if sources and len({s.stop - s.start for s in sources}) > 1:
                self.problems.append(f"{where}: every source needs the same number of layers")
            result.append(_Slice(sources, settings))
        return result

    def _source(self, entry: Any, position: int, where: str, sliced: bool) -> _Source | None:
        allowed = {"bank", *(p.name for p in self.method.per_model)} | ({"layers"} if sliced else set())
        if not isinstance(entry, dict) or not isinstance(entry.get("bank"), str):
            self.problems.append(f"{where}: entry {entry!r} must be {{bank: REF, …}}")
            return None
        ref = entry["bank"]
        label = f"{where}: {ref}"
        shared = sorted(k for k in entry if (p := self.method.parameter(k)) is not None and not p.per_model)
        if shared:
            self.problems.append(
                f"{label}: {', '.join(shared)} is shared by all models of a tensor in {self.method.op}; "
                "set it on the step (or the slice), not on a model"
            )
        unknown = sorted(set(entry) - allowed - set(shared))
        if unknown:
            self.problems.append(
                f"{label}: unknown key(s) {', '.join(unknown)} (accepted: {', '.join(sorted(allowed))})"
            )
        settings = {k: v for k, v in entry.items() if k not in ("bank", "layers") and k not in shared}
        self.problems.extend(_settings_problems(settings, self.method.parameters, label))
        resolved = self._bank(ref, label)
        if resolved is None:
            return None
        is_base, digest, tensors, layout = resolved
        is_base = is_base and self.method.needs_base
        ignored = [k for k in settings if is_base and (p := self.method.parameter(k)) is not None and not p.on_base]
        if ignored:
            self.problems.append(f"{label}: {', '.join(sorted(ignored))} does not apply to the base model; remove it")
        layers = layout.value("layers")
        start, stop = 0, layers
        if sliced:
            span = entry.get("layers")
            if not (isinstance(span, list) and len(span) == 2 and all(type(x) is int for x in span)):
                self.problems.append(f"{label}: layers must be [START, STOP], got {span!r}")
                return None
            start, stop = span
            if not 0 <= start < stop <= layers:
                self.problems.append(f"{label}: layers [{start}, {stop}] is not a range of its {layers} layers")
                return None
        return _Source(ref, position, is_base, digest, tensors, layout, settings, start, stop)

    def _bank(self, ref: str, label: str) -> tuple[bool, str, dict[str, Task], Layout] | None:
        """(is the composition's base, tensors, layout) of a model ref; None after a problem."""
        if ref not in self.banks:
            self.banks[ref] = self._resolve(ref, label)
        return self.banks[ref]

    def _resolve(self, ref: str, label: str) -> tuple[bool, str, dict[str, Task], Layout] | None:
        try:
            digest = self.source.bank(ref, INPUT_ROLE).digest
            model = self.state if digest == self.source.base.digest else self.source.model(ref, INPUT_ROLE)
        except PlanProblem as exc:
            self.problems.extend(f"{label}: {p}" for p in exc.problems)
            return None
        if model.tensors == self.state.tensors and model.config == self.state.config:
            return True, digest, self.state.tensors, self.layout  # the base (or a bank of the same model)
        theirs, ours = model.config.get("model_type"), self.state.config.get("model_type")
        if theirs != ours:
            self.problems.append(
                f"{label} is a {theirs} model, the base is a {ours} model: merges need one architecture"
            )
            return None
        layout = Layout(model.config)
        extra = sorted(n for n in model.tensors if layout.layer_of(n) is None and n not in self.state.tensors)
        if extra:
            self.problems.append(f"{label} has {', '.join(extra[:3])}, which the base does not")
        return False, digest, model.tensors, layout


def _check_inputs(piece: _Slice, method: MergeMethod, number: int | None, problems: list[str]) -> None:
    where = f"slice {number}: " if number is not None else ""
    count = len(piece.sources)
    if method.needs_base and not any(s.is_base for s in piece.sources):
        problems.append(f"{where}{method.op} needs the base model among the sources of every slice")
    if count < method.min_inputs:
        problems.append(f"{where}{method.op} needs at least {method.min_inputs} models (the base counted), got {count}")
    if method.max_inputs is not None and count > method.max_inputs:
        counted = " (the base counted)" if method.needs_base else ""
        problems.append(f"{where}{method.op} takes at most {method.max_inputs} models{counted}, got {count}")
    digests = [s.digest for s in piece.sources]
    duplicates = [s.ref for s in piece.sources if digests.count(s.digest) > 1]
    if duplicates:
        problems.append(f"{where}{' and '.join(duplicates)} name the same model; list each model once")


class _TensorPlanner:
    """Builds every output tensor's task from the slices."""

    def __init__(self, method: MergeMethod, merge_tensor: MergeTensor, step: dict[str, Any], problems: list[str]):
        self.method, self.merge_tensor, self.step, self.problems = method, merge_tensor, step, problems
        self.reported: dict[str, int] = {}

    def plan(self, state: ModelState, layout: Layout, slices: list[_Slice]) -> dict[str, Task]:
        tensors: dict[str, Task] = {}
        for name in state.tensors:
            if layout.layer_of(name) is None:
                piece = slices[0] if layout.is_input_side(name) else slices[-1]
                tensors[name] = self._tensor(name, [(s, name) for s in piece.sources], piece, 0.0)
        layer = 0
        for piece in slices:
            layer_maps = [s.layout.tensors_by_layer(s.tensors) for s in piece.sources]
            first = piece.sources[0]
            for offset in range(piece.length):
                t = offset / (piece.length - 1) if piece.length > 1 else 1.0
                suffixes = layer_maps[0][first.start + offset]
                for suffix in suffixes:
                    name = layout.layer_prefix(layer) + suffix
                    inputs = [(s, s.layout.layer_prefix(s.start + offset) + suffix) for s in piece.sources]
                    tensors[name] = self._tensor(name, inputs, piece, t)
                for s, by_layer in zip(piece.sources[1:], layer_maps[1:], strict=True):
                    for suffix in sorted(set(by_layer[s.start + offset]) - set(suffixes)):
                        prefix = s.layout.layer_prefix(s.start + offset)
                        self._problem(s.ref, f"{s.ref} has {prefix}{suffix}, which {first.ref} does not")
                layer += 1
        return tensors

    def _problem(self, ref: str, text: str) -> None:
        count = self.reported.get(ref, 0)
        self.reported[ref] = count + 1
        if count < _MAX_PROBLEMS_PER_MODEL:
            self.problems.append(text)
        elif count == _MAX_PROBLEMS_PER_MODEL:
            self.problems.append(f"{ref}: more tensors differ")

    def _tensor(self, name: str, inputs: list[tuple[_Source, str]], piece: _Slice, t: float) -> Task:
        first_source, first_name = inputs[0]
        reference = first_source.tensors[first_name]
        contributions = []
        for s, input_name in inputs:
            task = s.tensors.get(input_name)
            if task is None:
                self._problem(s.ref, f"{s.ref} has no {input_name}")
                continue
            if task.shape != reference.shape:
                self._problem(
                    s.ref,
                    f"{s.ref}: {input_name} is {list(task.shape)}, {first_source.ref} has {list(reference.shape)}",
                )
                continue
            scopes = [s.settings, piece.settings, self.step]
            values = {
                p.name: self._value(p, scopes, input_name, t, s.ref)
                for p in self.method.per_model
                if p.on_base or not s.is_base
            }
            contributions.append(Contribution(s.ref, s.position, task, s.is_base, values))
        if len(contributions) < len(inputs):
            return reference
        if not is_floating(reference.dtype):
            return reference  # integer buffers are not merged (mergekit copies them too)
        shared = {p.name: self._value(p, [piece.settings, self.step], name, t, "") for p in self.method.shared}
        return self.merge_tensor(TensorMerge(name, tuple(contributions), shared))

    def _value(self, parameter: Parameter, scopes: list[dict[str, Any]], tensor: str, t: float, ref: str) -> Any:
        value = resolve(parameter, scopes, tensor, t)
        if value is REQUIRED:
            whom = f" for {ref}" if ref else ""
            where = "the model entry or the step" if ref else "the step"
            self._problem(ref or parameter.name, f"{parameter.name} is required{whom} ({tensor}); set it on {where}")
            return 0.0
        return value


def _layer_types(slices: list[_Slice]) -> list[Any]:
    """`layer_types` of the output: each output layer's type in the first source it comes from."""
    types = []
    for piece in slices:
        first = piece.sources[0]
        source_types = first.layout.config.get("layer_types") or []
        for offset in range(piece.length):
            layer = first.start + offset
            types.append(source_types[layer] if layer < len(source_types) else "full_attention")
    return types
