"""Making scaffold banks: from a folder (`seeds.safetensors` + `scaffold.json`, or a PEFT LoRA
folder, which becomes `lora` seeds) or from the live seed modules a training loop hands over
(`Registry.add_scaffold`).

Everything is validated against the host bank before anything is written — every seed's
slot, kind, options, alpha, tensor names and shapes — so a refused scaffold leaves the store
untouched. The host is recorded as the bank's parent with role `host`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .banks import Bank, Parent, TensorRecord, new_bank_manifest
from .checkpoints import ADAPTER_CONFIG
from .errors import InputError
from .file_range import FileRange
from .ingest import record_bank, scan_folder
from .json_input import parse_json_object
from .names import check_ref_name
from .naming import with_article
from .peft_adapter import classify_key, merge_blockers, module_rank_and_alpha
from .provenance import new_activity
from .safetensors_format import FLOAT_DTYPES, SafetensorsHeader, TensorEntry, read_header
from .scaffolds import (
    HOST_ROLE,
    KINDS,
    check_seed,
    group_by_slot,
    normalise_alpha,
    normalise_options,
    seed_layout,
)
from .sources import tensor_ranges
from .store import Store

SCAFFOLD_CONFIG = "scaffold.json"
SEED_WEIGHTS = "seeds.safetensors"
_TOP_LEVEL = {"kind", "alpha", "seeds", "metadata"}
_ACTIVATIONS = {"GELU": "gelu", "ReLU": "relu", "SiLU": "silu", "Tanh": "tanh", "Sigmoid": "sigmoid"}


@dataclass(frozen=True)
class ScaffoldResult:
    """A recorded scaffold bank version."""

    name: str
    version: int
    digest: str
    host: str
    seeds: int
    tensors: int
    bytes: int
    new_objects: int
    unchanged: bool


@dataclass(frozen=True)
class SeedSpec:
    """A seed for `Registry.add_scaffold` with its own kind, alpha or options (the call's
    defaults otherwise). `value` is a module or a mapping of its state-dict tensors."""

    value: Any
    kind: str | None = None
    alpha: float | Mapping[str, Any] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedTensors:
    """Seed tensors to store: a safetensors file (or the bytes the Python API serialised) and,
    for each tensor kept, its bank name (`<slot>.<role>`) → its name in the file."""

    header: SafetensorsHeader
    names: dict[str, str]
    path: Path | None = None
    blob: bytes | None = None

    def entry(self, name: str) -> TensorEntry:
        return self.header.tensors[self.names[name]]

    def ranges(self) -> Iterator[tuple[str, TensorEntry, memoryview | FileRange]]:
        """(bank name, entry, bytes) of every kept tensor, in file order."""
        bank_name = {file_name: name for name, file_name in self.names.items()}
        found: Iterator[tuple[str, TensorEntry, memoryview | FileRange]]
        if self.path is not None:
            found = tensor_ranges(self.path, self.header)
        else:
            assert self.blob is not None
            view = memoryview(self.blob)
            start = self.header.data_start
            found = ((n, e, view[start + e.begin : start + e.end]) for n, e in self.header.tensors.items())
        for file_name, entry, data in found:
            if file_name in bank_name:
                yield bank_name[file_name], entry, data


def add_scaffold_folder(
    store: Store, folder: str | Path, name: str, *, host: str, alpha: Any = None, message: str = ""
) -> ScaffoldResult:
    """Record the scaffold in `folder` (seeds.safetensors + scaffold.json, or a PEFT LoRA
    folder) as the next version of `name`. `alpha` (a constant or a schedule) replaces every
    seed's alpha; a PEFT folder's seeds default to 1.0."""
    check_ref_name(name)
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder}: not a folder")
    host_bank = _host(store, host)
    metadata = None
    if (root / ADAPTER_CONFIG).is_file():
        seeds, tensors = _from_peft(root, host_bank, host)
        kind = "peft-lora"
    elif (root / SCAFFOLD_CONFIG).is_file():
        seeds, tensors, metadata = _from_scaffold_folder(root)
        kind = "scaffold-folder"
    else:
        raise InputError(
            f"{root}: neither a scaffold folder ({SCAFFOLD_CONFIG} + {SEED_WEIGHTS}) nor a PEFT LoRA folder "
            f"({ADAPTER_CONFIG})"
        )
    if alpha is not None or kind == "peft-lora":
        seeds = {slot: {**descriptor, "alpha": 1.0 if alpha is None else alpha} for slot, descriptor in seeds.items()}
    parameters = {"source": root.resolve().name, "format": kind}
    return _store_scaffold(store, name, host_bank, host, seeds, tensors, parameters, message, metadata)


def add_scaffold_seeds(
    store: Store,
    name: str,
    *,
    host: str,
    seeds: Mapping[str, Any],
    kind: str = "delta",
    alpha: float | Mapping[str, Any] = 1.0,
    message: str = "",
    **options: Any,
) -> ScaffoldResult:
    """Record live seeds as the next version of scaffold bank `name` (see `Registry.add_scaffold`)."""
    check_ref_name(name)
    host_bank = _host(store, host)
    taken = {option for spec in KINDS.values() for option in spec.options}
    if set(options) - taken:
        raise InputError(
            f"unknown seed option(s) {', '.join(sorted(set(options) - taken))} (known: {', '.join(sorted(taken))})"
        )
    descriptors: dict[str, dict[str, Any]] = {}
    flat: dict[str, Any] = {}
    for slot, value in seeds.items():
        spec = value if isinstance(value, SeedSpec) else SeedSpec(value)
        seed_kind = spec.kind or kind
        if seed_kind not in KINDS:
            raise InputError(f"seed {slot}: unknown kind {seed_kind!r} (known: {', '.join(KINDS)})")
        tensors, found = seed_tensors(spec.value, seed_kind, f"seed {slot}")
        descriptors[slot] = {
            **{key: value for key, value in options.items() if key in KINDS[seed_kind].options},
            **found,
            **spec.options,
            "kind": seed_kind,
            "alpha": spec.alpha if spec.alpha is not None else alpha,
        }
        flat.update({f"{slot}.{role}": tensor for role, tensor in tensors.items()})
    from safetensors.torch import save

    blob = save(flat)
    header = read_header(io.BytesIO(blob), len(blob), "seed tensors")
    parameters = {"source": "python", "format": "modules"}
    tensors_in = SeedTensors(header, {n: n for n in header.tensors}, blob=blob)
    return _store_scaffold(store, name, host_bank, host, descriptors, tensors_in, parameters, message)


def seed_tensors(value: Any, kind: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A live seed (a module, or a mapping of its state-dict tensors) as (role → CPU tensor,
    options found on it: router `gates`, an nn.Sequential mlp's `activation`). Single-linear
    kinds take an nn.Linear (or a Conv1D, transposed to nn.Linear's layout) or
    {weight, bias}; their roles get the kind's prefix (`delta.weight`)."""
    import torch
    from torch import nn

    options: dict[str, Any] = {}
    if isinstance(value, nn.Sequential) and kind == "mlp":
        up, act, down = (list(value) + [None] * 3)[:3] if len(value) == 3 else (None, None, None)
        activation = _ACTIVATIONS.get(type(act).__name__)
        if not (isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and activation):
            raise InputError(f"{where}: an mlp seed Sequential must be (Linear, GELU|ReLU|SiLU|Tanh|Sigmoid, Linear)")
        if activation == "gelu" and getattr(act, "approximate", "none") == "tanh":
            activation = "gelu_pytorch_tanh"
        options["activation"] = activation
        state = {f"up.{k}": v for k, v in up.state_dict().items()} | {
            f"down.{k}": v for k, v in down.state_dict().items()
        }
    elif isinstance(value, nn.Module):
        state = dict(value.state_dict())
        if type(value).__name__ == "Conv1D" and "weight" in state:
            state["weight"] = state["weight"].t()
    elif isinstance(value, Mapping):
        state = dict(value)
    else:
        raise InputError(f"{where}: a seed is a torch module or a mapping of tensors, got {type(value).__name__}")
    if kind == "router" and "gates" in state:
        options["gates"] = [float(g) for g in torch.as_tensor(state.pop("gates")).reshape(-1).tolist()]
    prefix = f"{kind}." if f"{kind}.weight" in KINDS[kind].shapes else ""
    tensors = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{where}: {key} is a {type(tensor).__name__}, not a tensor")
        role = key if not prefix or key.startswith(prefix) else prefix + key
        tensors[role] = tensor.detach().to("cpu").contiguous()
    return tensors, options


def _host(store: Store, ref: str) -> Bank:
    bank = store.bank(ref)
    if bank.type != "base" or bank.config is None:
        raise InputError(f"--host {ref} is {with_article(bank.type)} bank; seeds are grafted onto a base model bank")
    return bank


def _from_scaffold_folder(root: Path) -> tuple[dict[str, Any], SeedTensors, dict[str, Any] | None]:
    config_path = root / SCAFFOLD_CONFIG
    document = parse_json_object(config_path.read_bytes(), str(config_path), "scaffold description")
    unknown = sorted(set(document) - _TOP_LEVEL)
    if unknown:
        accepted = ", ".join(sorted(_TOP_LEVEL))
        raise InputError(f"{config_path}: unknown key(s) {', '.join(unknown)} (accepted: {accepted})")
    listed = document.get("seeds")
    if not isinstance(listed, dict) or not listed or not all(isinstance(v, dict) for v in listed.values()):
        raise InputError(f"{config_path}: 'seeds' must map each slot (a module path) to its seed description")
    defaults = {key: document[key] for key in ("kind", "alpha") if key in document}
    seeds = {slot: {"alpha": 1.0, **defaults, **descriptor} for slot, descriptor in listed.items()}
    metadata = document.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"{config_path}: 'metadata' must be an object")
    weights = root / SEED_WEIGHTS
    if not weights.is_file():
        raise InputError(f"{root}: no {SEED_WEIGHTS} next to {SCAFFOLD_CONFIG}")
    with open(weights, "rb") as stream:
        header = read_header(stream, weights.stat().st_size, str(weights))
    return seeds, SeedTensors(header, {n: n for n in header.tensors}, path=weights), metadata


def _from_peft(root: Path, host: Bank, host_ref: str) -> tuple[dict[str, Any], SeedTensors]:
    """A PEFT LoRA folder as `lora` seeds: one per adapted module, with its r, lora_alpha
    (rank/alpha patterns applied) and rsLoRA flag."""
    scan = scan_folder(root)
    config = scan.config
    problems = merge_blockers(config, str(root))
    problems += [
        f"{root}: {key} is set; a lora scaffold holds plain LoRA factors — ingest it as an adapter bank "
        "(weightbank ingest --base) instead"
        for key in ("use_dora", "lora_bias")
        if config.get(key)
    ]
    header = scan.weights[0].header
    names: dict[str, str] = {}
    modules: set[str] = set()
    for key in header.tensors:
        info = classify_key(key)
        if info.part not in ("lora_A", "lora_B"):
            problems.append(f"{root}: {key} is not a LoRA factor of a linear layer; a lora scaffold holds only those")
            continue
        modules.add(info.module)
        names[f"{info.module}.{info.part}.weight"] = key
    transposed = bool(config.get("fan_in_fan_out"))
    for module in sorted(modules):
        if (seed_layout(host.config or {}, module) == "in_out") != transposed and f"{module}.weight" in host.tensors:
            problems.append(
                f"{root}: fan_in_fan_out={transposed} but {host_ref}'s {module} stores its weight "
                f"{'(in, out)' if not transposed else '(out, in)'}"
            )
    if problems:
        raise InputError(_joined(problems))
    seeds: dict[str, Any] = {}
    for module in sorted(modules):
        rank, lora_alpha = module_rank_and_alpha(config, module)
        rslora = bool(config.get("use_rslora"))
        seeds[module] = {"kind": "lora", "r": rank, "lora_alpha": lora_alpha, "use_rslora": rslora}
    return seeds, SeedTensors(header, names, path=scan.weights[0].file.path)


def _store_scaffold(
    store: Store,
    name: str,
    host: Bank,
    host_ref: str,
    seeds: Mapping[str, Any],
    tensors: SeedTensors,
    parameters: dict[str, Any],
    message: str,
    metadata: dict[str, Any] | None = None,
) -> ScaffoldResult:
    """Validate every seed against the host, then store the tensors and record the bank."""
    if not seeds:
        raise InputError(f"scaffold {name}: no seeds given")
    grouped, stray = group_by_slot(list(tensors.names), list(seeds))
    problems = [f"{n} belongs to no seed (its slot is not listed)" for n in stray]
    fold_seeds: dict[str, dict[str, Any]] = {}
    for slot, descriptor in seeds.items():
        try:
            fold_seeds[slot] = _descriptor(slot, descriptor, grouped[slot], tensors, host, host_ref)
        except InputError as exc:
            problems.append(str(exc))
    if problems:
        raise InputError(f"scaffold {name} does not fit host {host_ref}: {_joined(problems)}")
    records: dict[str, TensorRecord] = {}
    created = 0
    with store.backend.batch():
        for bank_name, entry, data in tensors.ranges():
            put = store.objects.put_tensor(entry.dtype, entry.shape, data)
            created += put.created
            records[bank_name] = TensorRecord(put.digest, entry.dtype, entry.shape, entry.nbytes)
    manifest = new_bank_manifest(
        "scaffold",
        tensors=records,
        files={},
        parents=[Parent(host.digest, HOST_ROLE)],
        activity=new_activity("scaffold.add", {**parameters, "host": host.digest}, message),
        fold={"host_ref": host_ref, "seeds": fold_seeds},
        metadata=metadata,
    )
    version, digest, unchanged = record_bank(store, name, manifest, "add", message)
    size = sum(r.bytes for r in records.values())
    return ScaffoldResult(name, version, digest, host.digest, len(fold_seeds), len(records), size, created, unchanged)


def _descriptor(
    slot: str, descriptor: Any, names: list[str], tensors: SeedTensors, host: Bank, host_ref: str
) -> dict[str, Any]:
    """The seed's stored descriptor, or InputError naming the seed and every problem with it."""
    where = f"seed {slot}"
    kind = descriptor.get("kind")
    if kind not in KINDS:
        raise InputError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    shapes = {n[len(slot) + 1 :]: tensors.entry(n).shape for n in names}
    if not shapes:
        raise InputError(f"{where}: no tensors named {slot}.<role>")
    alpha = normalise_alpha(descriptor.get("alpha", 1.0), where)
    given = {key: value for key, value in descriptor.items() if key not in ("kind", "alpha")}
    options = normalise_options(kind, given, shapes, where)
    problems = [f"{n} is {tensors.entry(n).dtype}, not a floating-point tensor" for n in names
                if tensors.entry(n).dtype not in FLOAT_DTYPES]  # fmt: skip
    problems += check_seed(slot, kind, shapes, options, host, f"host {host_ref}")
    if problems:
        raise InputError(f"{where}: {'; '.join(problems)}")
    return {"kind": kind, "alpha": alpha, **options}


def _joined(problems: list[str]) -> str:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more
