"""Scaffold banks: Kasmina-style seeds on a host model's linear layers, and their MES v1 `fold`
descriptor — seed kinds with their tensors and shapes, alpha schedules, which seeds can fold
into the host weights and why not, and the decision (fuse / prune / persist) taken on them.

A seed sits at a *slot*, the module path of a linear layer of the host (`nn.Linear`, or GPT-2's
`Conv1D`, which stores its weight (in, out)). Seed tensors are always in nn.Linear's (out, in)
layout — the seed as a function of the slot's input — whatever the host stores; folds transpose
for Conv1D hosts. A seed's tensors are stored under `<slot>.<role>`, the role being the
tensor's name inside the runtime module `scaffold.attach` builds (`delta.weight`, `lora_A.weight`,
`experts.0.weight`, …), so an attached model's state dict has exactly the bank's names.

The folds (see GROWTH.md "Scaffold folds" and docs/scaffolds.md), W the host weight (out, in):
delta W + αΔW; blend (1−α)W + αS; lora W + α·s·BA; input W(I + αL), b + αWc; output (I + αL)W,
b + α(Lb + c); router (1−α)W + αΣgₖWₖ; mlp does not fold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .banks import Bank, TensorRecord
from .errors import InputError
from .naming import with_article

# Hugging Face model types whose linear layers are transformers' Conv1D, weight (in, out);
# their lm_head stays an nn.Linear.
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
SCHEDULE_SHAPES = ("linear", "cosine", "sigmoid")
DECISIONS = {"fuse": "fused", "prune": "pruned", "persist": "persisted"}
HOST_ROLE = "host"


@dataclass(frozen=True)
class SeedKind:
    """One kind of seed: its tensors (role → symbolic shape; `{k}` numbers router experts), which
    are required, which descriptor options it takes, and which of its tensors fold into the
    host's bias (so a host without one cannot absorb them)."""

    name: str
    shapes: dict[str, tuple[str, ...]]
    required: tuple[str, ...]
    options: tuple[str, ...] = ()
    into_bias: tuple[str, ...] = ()
    foldable: bool = True


def _single(kind: str, rows: str, cols: str) -> SeedKind:
    """A kind whose seed is one linear layer (`<kind>.weight`, optional `<kind>.bias`)."""
    return SeedKind(
        kind, {f"{kind}.weight": (rows, cols), f"{kind}.bias": (rows,)}, (f"{kind}.weight",), (), (f"{kind}.bias",)
    )


KINDS: dict[str, SeedKind] = {
    "delta": _single("delta", "out", "in"),
    "blend": _single("blend", "out", "in"),
    "input": _single("input", "in", "in"),
    "output": _single("output", "out", "out"),
    "lora": SeedKind(
        "lora",
        {"lora_A.weight": ("r", "in"), "lora_B.weight": ("out", "r")},
        ("lora_A.weight", "lora_B.weight"),
        ("r", "lora_alpha", "use_rslora"),
    ),
    "router": SeedKind(
        "router",
        {
            "experts.{k}.weight": ("out", "in"),
            "experts.{k}.bias": ("out",),
            "gate.weight": ("experts", "in"),
            "gate.bias": ("experts",),
        },
        ("experts.0.weight",),
        ("gates",),
        ("experts.{k}.bias",),
    ),
    "mlp": SeedKind(
        "mlp",
        {
            "up.weight": ("hidden", "in"),
            "up.bias": ("hidden",),
            "down.weight": ("out", "hidden"),
            "down.bias": ("out",),
        },
        ("up.weight", "down.weight"),
        ("activation",),
        foldable=False,
    ),
}
_EXPERT = re.compile(r"experts\.(\d+)\.(weight|bias)")


def role_template(role: str) -> str:
    """`experts.3.weight` → `experts.{k}.weight`; other roles are their own template."""
    match = _EXPERT.fullmatch(role)
    return f"experts.{{k}}.{match[2]}" if match else role


# ---------------------------------------------------------------------------------------- alpha


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def normalise_alpha(value: Any, where: str) -> float | dict[str, Any]:
    """A seed's alpha as stored: a constant, or a complete schedule
    `{alpha0, alpha1, shape, steps, at[, steepness]}` (`at` defaults to `steps`, the ramp's end)."""
    if not isinstance(value, Mapping):
        return _number(value, f"{where}: alpha")
    unknown = sorted(set(value) - {"alpha0", "alpha1", "shape", "steps", "at", "steepness"})
    missing = sorted({"alpha0", "alpha1", "shape", "steps"} - set(value))
    if unknown or missing:
        raise InputError(
            f"{where}: an alpha schedule is {{alpha0, alpha1, shape, steps, at[, steepness]}}"
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
            + (f"; missing {', '.join(missing)}" if missing else "")
        )
    shape = value["shape"]
    if shape not in SCHEDULE_SHAPES:
        raise InputError(f"{where}: alpha shape must be one of {', '.join(SCHEDULE_SHAPES)}, got {shape!r}")
    steps, at = value["steps"], value.get("at", value["steps"])
    for key, number, least in (("steps", steps, 1), ("at", at, 0)):
        if isinstance(number, bool) or not isinstance(number, int) or number < least:
            raise InputError(f"{where}: alpha {key} must be an integer ≥ {least}, got {number!r}")
    schedule: dict[str, Any] = {
        "alpha0": _number(value["alpha0"], f"{where}: alpha0"),
        "alpha1": _number(value["alpha1"], f"{where}: alpha1"),
        "shape": shape,
        "steps": steps,
        "at": at,
    }
    if "steepness" in value:
        if shape != "sigmoid":
            raise InputError(f"{where}: steepness applies to the sigmoid shape only")
        schedule["steepness"] = _number(value["steepness"], f"{where}: steepness")
        if schedule["steepness"] <= 0:
            raise InputError(f"{where}: steepness must be positive")
    return schedule


def ramp(shape: str, progress: float, steepness: float = 1.0) -> float:
    """φ(u) for u = t/T clamped to [0, 1]: linear u; cosine ½(1 − cos πu); sigmoid
    σ(k(u − ½)) normalised to φ(0) = 0, φ(1) = 1, with k = 12·steepness (Esper's [−6, 6])."""
    u = min(1.0, max(0.0, progress))
    if shape == "linear":
        return u
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * u))
    k = 12.0 * steepness

    def sigma(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    low, high = sigma(-k / 2), sigma(k / 2)
    return (sigma(k * (u - 0.5)) - low) / (high - low)


def alpha_at(alpha: float | Mapping[str, Any], at: int | None = None) -> float:
    """The alpha a seed folds with: the constant, or α₀ + (α₁ − α₀)·φ(t/T) at step `at`
    (default: the schedule's own `at`)."""
    if not isinstance(alpha, Mapping):
        return float(alpha)
    step = alpha["at"] if at is None else at
    phi = ramp(alpha["shape"], step / alpha["steps"], alpha.get("steepness", 1.0))
    return alpha["alpha0"] + (alpha["alpha1"] - alpha["alpha0"]) * phi


def describe_alpha(alpha: float | Mapping[str, Any], at: int | None = None) -> str:
    """`0.5`, or `cosine 0→1 over 1000 steps at 250 = 0.1464`."""
    if not isinstance(alpha, Mapping):
        return f"{alpha:g}"
    step = alpha["at"] if at is None else at
    return (
        f"{alpha['shape']} {alpha['alpha0']:g}→{alpha['alpha1']:g} over {alpha['steps']} steps at {step} "
        f"= {alpha_at(alpha, at):.4g}"
    )


# ----------------------------------------------------------------------------------- descriptors


def normalise_options(
    kind: str, options: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: str
) -> dict[str, Any]:
    """A seed's kind-specific descriptor options, checked and completed: lora `r` (from lora_A),
    `lora_alpha` (default r, i.e. scale 1) and `use_rslora`; router `gates` (input-independent,
    one per expert, unless a `gate` layer computes them from the input); mlp `activation`
    (a transformers ACT2FN name)."""
    spec = KINDS[kind]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise InputError(f"{where}: {kind} seeds take no option {', '.join(unknown)} (accepted: {accepted})")
    result: dict[str, Any] = {}
    if kind == "lora":
        rank = shapes["lora_A.weight"][0] if "lora_A.weight" in shapes else options.get("r")
        if options.get("r", rank) != rank:
            raise InputError(f"{where}: r={options['r']} but lora_A has rank {rank}")
        result["r"] = rank
        result["lora_alpha"] = _number(options.get("lora_alpha", rank), f"{where}: lora_alpha")
        rslora = options.get("use_rslora", False)
        if not isinstance(rslora, bool):
            raise InputError(f"{where}: use_rslora must be true or false")
        result["use_rslora"] = rslora
    elif kind == "router" and "gates" in options:
        gates = options["gates"]
        if not isinstance(gates, list) or not gates:
            raise InputError(f"{where}: gates must be a non-empty list of numbers, one per expert")
        result["gates"] = [_number(g, f"{where}: gate") for g in gates]
    elif kind == "mlp":
        activation = options.get("activation")
        from transformers.activations import ACT2FN

        if activation not in ACT2FN:
            raise InputError(
                f"{where}: activation must be a transformers ACT2FN name (gelu, relu, silu, …), got {activation!r}"
            )
        result["activation"] = activation
    return result


def role_problems(kind: str, shapes: Mapping[str, tuple[int, ...]], options: Mapping[str, Any]) -> list[str]:
    """Tensors missing, unexpected or inconsistent for the kind (before looking at the host)."""
    spec = KINDS[kind]
    problems = [f"unexpected tensor {r} for a {kind} seed" for r in shapes if role_template(r) not in spec.shapes]
    problems += [f"a {kind} seed needs {role}" for role in spec.required if role not in shapes]
    if kind == "router":
        experts = sorted({int(m[1]) for role in shapes if (m := _EXPERT.fullmatch(role))})
        if experts != list(range(len(experts))):
            problems.append(f"experts must be numbered 0…{len(experts) - 1}, found {experts}")
        if any(f"experts.{k}.bias" in shapes for k in experts) and any(
            f"experts.{k}.bias" not in shapes for k in experts
        ):
            problems.append("either every expert has a bias or none has")
        gated = "gate.weight" in shapes
        if gated == ("gates" in options):
            problems.append("a router needs either gates (numbers, input-independent) or a gate.weight layer, not both")
        elif not gated and len(options["gates"]) != len(experts):
            problems.append(f"{len(options['gates'])} gates for {len(experts)} experts")
        if "gate.bias" in shapes and not gated:
            problems.append("gate.bias without gate.weight")
    return problems


def seed_layout(config: Mapping[str, Any], slot: str) -> str:
    """How the host stores the slot's weight: `in_out` (Conv1D) or `out_in` (nn.Linear)."""
    conv1d = config.get("model_type") in CONV1D_MODEL_TYPES and slot.rpartition(".")[2] != "lm_head"
    return "in_out" if conv1d else "out_in"


def shape_problems(kind: str, shapes: Mapping[str, tuple[int, ...]], weight: tuple[int, ...], layout: str) -> list[str]:
    """Seed tensors whose shapes do not fit a host weight of shape `weight` stored in `layout`."""
    out_features, in_features = (weight[1], weight[0]) if layout == "in_out" else weight
    sizes: dict[str, int] = {"out": out_features, "in": in_features}
    if kind == "router":
        sizes["experts"] = sum(1 for role in shapes if _EXPERT.fullmatch(role) and role.endswith(".weight"))
    problems = []
    for role, shape in sorted(shapes.items()):
        symbols = KINDS[kind].shapes[role_template(role)]
        expected = [sizes.setdefault(symbol, dim) for symbol, dim in zip(symbols, shape, strict=False)]
        if len(shape) != len(symbols) or list(shape) != expected:
            wanted = "×".join(f"{symbol}={sizes[symbol]}" if symbol in sizes else symbol for symbol in symbols)
            problems.append(f"{role} is {list(shape)}, expected [{wanted}] for a host weight {list(weight)}")
    return problems


def slot_problem(slot: str, tensors: Mapping[str, TensorRecord], host_label: str) -> str | None:
    """Why `slot` is not a linear layer of the host, or None if it is (a 2-D `<slot>.weight`).
    A block or a norm acts on the residual stream, which no single host matrix produces."""
    weight = tensors.get(f"{slot}.weight")
    if weight is not None and len(weight.shape) == 2:
        return None
    if weight is not None:
        return (
            f"{slot} is a norm (a {len(weight.shape)}-D weight) on the residual stream: a seed there cannot fold into "
            "one host matrix; put it on the input or output of a linear layer"
        )
    inside = sorted(name[: -len(".weight")] for name, r in tensors.items() if name.startswith(f"{slot}.") and
                    name.endswith(".weight") and len(r.shape) == 2)  # fmt: skip
    if inside or not slot:
        example = f" (e.g. {inside[0]})" if inside else ""
        return (
            f"{slot or 'the whole model'} is a block whose output is the residual stream, not a linear layer: a seed "
            f"there cannot fold into one host matrix; put it on one of its linear layers{example}"
        )
    return f"{host_label} has no module {slot}"


def fold_blocker(kind: str, shapes: Mapping[str, tuple[int, ...]], host_has_bias: bool) -> str | None:
    """Why a (well-formed) seed cannot fold into its host, or None if it can."""
    if not KINDS[kind].foldable:
        return "an mlp seed (Linear–activation–Linear) is not linear in its input, so no host matrix can absorb it"
    if "gate.weight" in shapes:
        return "its gates depend on the input (gate.weight); only input-independent gates fold"
    biased = [role for role in shapes if role_template(role) in KINDS[kind].into_bias]
    if biased and not host_has_bias:
        return f"the host layer has no bias to absorb the seed's {biased[0]} (train the seed with bias=False)"
    return None


# ------------------------------------------------------------------------------------ bank view


@dataclass(frozen=True)
class Seed:
    """One seed of a scaffold bank: its slot, kind, alpha (constant or schedule), options and
    tensors by role."""

    slot: str
    kind: str
    alpha: float | dict[str, Any]
    options: dict[str, Any]
    tensors: dict[str, TensorRecord]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {role: record.shape for role, record in self.tensors.items()}

    @property
    def bytes(self) -> int:
        return sum(record.bytes for record in self.tensors.values())


def group_by_slot(names: list[str], slots: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Tensor names grouped under the longest slot they start with (`<slot>.<role>`), and the
    names that belong to no slot."""
    grouped: dict[str, list[str]] = {slot: [] for slot in slots}
    stray = []
    by_length = sorted(slots, key=len, reverse=True)
    for name in names:
        slot = next((s for s in by_length if name.startswith(f"{s}.")), None)
        if slot is None:
            stray.append(name)
        else:
            grouped[slot].append(name)
    return grouped, stray


class ScaffoldView:
    """Read-only view of a scaffold bank: its seeds, its host and the decision recorded on it."""

    def __init__(self, bank: Bank, ref: str) -> None:
        if bank.type != "scaffold":
            raise InputError(f"{ref} is {with_article(bank.type)} bank, not a scaffold")
        self.bank = bank
        self.ref = ref
        self.fold: dict[str, Any] = bank.document["fold"]

    @property
    def host(self) -> str:
        """The host bank's digest."""
        return next(p.digest for p in self.bank.parents if p.role == HOST_ROLE)

    @property
    def host_ref(self) -> str:
        """The host as it was named when the scaffold was made (`tiny@v1`)."""
        return self.fold["host_ref"]

    @property
    def decision(self) -> dict[str, Any] | None:
        return self.fold.get("decision")

    @property
    def seeds(self) -> dict[str, Seed]:
        records = self.bank.tensors
        grouped, _ = group_by_slot(list(records), list(self.fold["seeds"]))
        return {
            slot: Seed(
                slot,
                descriptor["kind"],
                descriptor["alpha"],
                {k: v for k, v in descriptor.items() if k not in ("kind", "alpha")},
                {name[len(slot) + 1 :]: records[name] for name in grouped[slot]},
            )
            for slot, descriptor in self.fold["seeds"].items()
        }


def check_seed(
    slot: str, kind: str, shapes: Mapping[str, tuple[int, ...]], options: Mapping[str, Any], host: Bank, host_label: str
) -> list[str]:
    """Every reason a seed does not fit its host: slot, tensors, shapes (foldability aside)."""
    tensors = host.tensors
    problem = slot_problem(slot, tensors, host_label)
    if problem is not None:
        return [problem]
    problems = role_problems(kind, shapes, options)
    if not problems:
        weight = tensors[f"{slot}.weight"].shape
        problems = shape_problems(kind, shapes, weight, seed_layout(host.config or {}, slot))
    return problems
