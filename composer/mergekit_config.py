"""mergekit configuration files ↔ MES `merge.*` steps.

A mergekit YAML (`merge_method`, `base_model`, `models:` or `slices:`, `parameters`, `dtype`,
`out_dtype`, `tokenizer_source: base`) becomes a composition whose base is `base_model` (else the
first model) and whose one step is the merge: each `models:` entry becomes `{bank: REF, …its
parameters}`, each slice `{sources: [{bank: REF, layers: [START, STOP], …}], …its parameters}`,
and the top-level `parameters` become the step's own keys. Everything else is refused with the
key named: nothing is ignored. `to_mergekit` goes back, for `verify`'s oracle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from weightbank.registry.errors import InputError

from .dtypes import TARGET_DTYPES

# mergekit merge_method → (our operator, its fixed step keys)
METHODS: dict[str, tuple[str, dict[str, str]]] = {
    "linear": ("merge.linear", {}),
    "task_arithmetic": ("merge.task_arithmetic", {}),
    "ties": ("merge.ties", {}),
    "dare_ties": ("merge.dare", {"combine": "ties"}),
    "dare_linear": ("merge.dare", {"combine": "linear"}),
    "slerp": ("merge.slerp", {}),
    "passthrough": ("merge.passthrough", {}),
    "model_stock": ("merge.model_stock", {}),
}
_TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source"}
_REFUSED = {
    "modules": "per-module configs (multimodal models) are not supported; use models: or slices:",
    "tokenizer": "tokenizer building (added tokens, vocabulary unions) is not supported; use tokenizer_source: base",
    "chat_template": "chat templates are not rewritten; the base model's tokenizer files are kept as they are",
}
# Step keys of MES that a mergekit parameter must not shadow.
_RESERVED = {"op", "bank", "models", "slices", "sources", "layers", "combine", "seed"}
TOKENIZER_SOURCE = "base"


@dataclass(frozen=True)
class MergekitConfig:
    """A validated mergekit config: what `to_composition` needs."""

    document: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.document["merge_method"])

    def model_strings(self) -> Iterator[str]:
        """Every model reference as written (base first), repeats included."""
        if "base_model" in self.document:
            yield self.document["base_model"]
        for entry in self.document.get("models") or []:
            yield entry["model"]
        for piece in self.document.get("slices") or []:
            for entry in piece["sources"]:
                yield entry["model"]


def parse(document: dict[str, Any], where: str) -> MergekitConfig:
    """Check a mergekit config for everything we do not support; InputError lists it all."""
    problems = []
    for key in document:
        if key in _REFUSED:
            problems.append(f"{key}: {_REFUSED[key]}")
        elif key not in _TOP_KEYS:
            problems.append(f"{key}: not a mergekit key weightbank supports ({', '.join(sorted(_TOP_KEYS))})")
    method = document.get("merge_method")
    if method not in METHODS:
        problems.append(f"merge_method: {method!r} is not supported (supported: {', '.join(METHODS)})")
    for key in ("dtype", "out_dtype"):
        if key in document and document[key] not in TARGET_DTYPES:
            problems.append(f"{key}: {document[key]!r} is not supported (use {', '.join(TARGET_DTYPES)})")
    source = document.get("tokenizer_source", TOKENIZER_SOURCE)
    if source != TOKENIZER_SOURCE:
        problems.append(
            f"tokenizer_source: {source!r} is not supported; only base (the base model's tokenizer, with every "
            "model's vocabulary the same) is"
        )
    if "base_model" in document:
        problems.extend(_model_problems(document["base_model"], "base_model"))
    if ("models" in document) == ("slices" in document):
        problems.append("give either models: or slices:")
    problems.extend(_parameters_problems(document.get("parameters"), "parameters"))
    for number, entry in enumerate(_list(document, "models", problems), start=1):
        problems.extend(_entry_problems(entry, f"models[{number}]", {"model", "parameters"}))
    for number, piece in enumerate(_list(document, "slices", problems), start=1):
        where_slice = f"slices[{number}]"
        if not isinstance(piece, dict):
            problems.append(f"{where_slice}: a slice is a mapping with sources:")
            continue
        for key in sorted(set(piece) - {"sources", "parameters", "base_model"}):
            problems.append(f"{where_slice}.{key}: not supported")
        if "base_model" in piece and piece["base_model"] != document.get("base_model"):
            problems.append(f"{where_slice}.base_model: a base per slice is not supported; set base_model once")
        problems.extend(_parameters_problems(piece.get("parameters"), f"{where_slice}.parameters"))
        for number_source, entry in enumerate(_list(piece, "sources", problems, where_slice), start=1):
            allowed = {"model", "layer_range", "parameters"}
            problems.extend(_entry_problems(entry, f"{where_slice}.sources[{number_source}]", allowed))
    if problems:
        raise InputError(f"{where}: mergekit config refused: " + "; ".join(problems))
    return MergekitConfig(document)


def _list(document: dict[str, Any], key: str, problems: list[str], where: str = "") -> list[Any]:
    value = document.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        problems.append(f"{where + '.' if where else ''}{key}: must be a non-empty list")
        return []
    return value


def _model_problems(model: Any, where: str) -> list[str]:
    if isinstance(model, dict):
        return [f"{where}: a model given as a mapping is not supported; give its folder or store ref"]
    if not isinstance(model, str) or not model:
        return [f"{where}: a model is a folder path or a store ref, got {model!r}"]
    if "+" in model:
        return [f"{where}: {model}: model+LoRA references are not supported; compose the adapter with an "
                "adapter.lora step, register the result with compose --name, and merge that"]  # fmt: skip
    return []


def _entry_problems(entry: Any, where: str, allowed: set[str]) -> list[str]:
    if not isinstance(entry, dict) or "model" not in entry:
        return [f"{where}: an entry is a mapping with model:"]
    problems = [f"{where}.{key}: not supported" for key in sorted(set(entry) - allowed)]
    problems.extend(_model_problems(entry["model"], f"{where}.model"))
    problems.extend(_parameters_problems(entry.get("parameters"), f"{where}.parameters"))
    return problems


def _parameters_problems(parameters: Any, where: str) -> list[str]:
    if parameters is None:
        return []
    if not isinstance(parameters, dict):
        return [f"{where}: must be a mapping of parameter names to values"]
    return [f"{where}.{key}: not a mergekit parameter weightbank accepts" for key in parameters if key in _RESERVED]


def base_string(config: MergekitConfig) -> str:
    """The model string the composition starts from: base_model, else the first model."""
    document = config.document
    if "base_model" in document:
        return str(document["base_model"])
    first = document["models"][0] if "models" in document else document["slices"][0]["sources"][0]
    return str(first["model"])


def to_composition(config: MergekitConfig, ref_of: Callable[[str], str], origin: str) -> dict[str, Any]:
    """The MES composition of a parsed config; `ref_of` maps each model string to its store ref."""
    document = config.document
    op, fixed = METHODS[config.method]
    step: dict[str, Any] = {"op": op, **fixed, **(document.get("parameters") or {})}
    if "models" in document:
        models = [{"bank": ref_of(e["model"]), **(e.get("parameters") or {})} for e in document["models"]]
        base = document.get("base_model")
        if base is not None and base not in [e["model"] for e in document["models"]]:
            models.append({"bank": ref_of(base)})  # mergekit adds the base model as an input
        step["models"] = models
    else:
        step["slices"] = [
            {
                "sources": [
                    {"bank": ref_of(s["model"]), "layers": list(s["layer_range"]), **(s.get("parameters") or {})}
                    for s in piece["sources"]
                ],
                **(piece.get("parameters") or {}),
            }
            for piece in document["slices"]
        ]
    composition: dict[str, Any] = {"mes_version": "1", "base": ref_of(base_string(config))}
    dtype = document.get("out_dtype") or document.get("dtype")
    if dtype is not None:
        composition["dtype"] = dtype
    composition["steps"] = [step]
    composition["metadata"] = {"mergekit": {"merge_method": config.method, "config": origin}}
    return composition


def to_mergekit(
    step: dict[str, Any], merge_method: str, path_of: Callable[[str], str], base: str | None
) -> dict[str, Any]:
    """The mergekit config of a `merge.*` step; `path_of` maps a bank ref to its exported folder,
    `base` is the base model's folder (None for methods without one)."""
    names = {"op", "models", "slices", "combine", "seed"}
    config: dict[str, Any] = {
        "merge_method": merge_method,
        "dtype": "float32",
        "parameters": {k: v for k, v in step.items() if k not in names},
    }
    if base is not None:
        config["base_model"] = base

    def parameters(entry: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k not in ("bank", "layers")}

    if "models" in step:
        config["models"] = [{"model": path_of(e["bank"]), "parameters": parameters(e)} for e in step["models"]]
    else:
        config["slices"] = [
            {
                "sources": [
                    {"model": path_of(s["bank"]), "layer_range": s["layers"], "parameters": parameters(s)}
                    for s in piece["sources"]
                ],
                "parameters": {k: v for k, v in piece.items() if k != "sources"},
            }
            for piece in step["slices"]
        ]
    return config
