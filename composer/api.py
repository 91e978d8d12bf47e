"""The composer's Python API."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel

from weightbank.registry.checkpoints import MODEL_CONFIG
from weightbank.registry.export import write_files
from weightbank.registry.store import Store

from .build import build_model
from .executor import Executor
from .hf_model import config_object
from .plan import CompositionWarning, Plan, make_plan, refuse_attachments
from .verify import DEFAULT_TOLERANCE, VerifyReport, verify
from .write import ComposeResult, write_composition

Spec = str | Path | dict[str, Any]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json")


def _store(store: str | Path | Store | None) -> Store:
    return store if isinstance(store, Store) else Store(store)


def plan(spec: Spec, *, dtype: str | None = None, store: str | Path | Store | None = None) -> Plan:
    """Validate a composition and plan every tensor, reading no tensor data.

    Example:
        >>> p = plan("my-model@v1")                    # doctest: +SKIP
        >>> p.summary()["bytes_read"]                  # doctest: +SKIP
    """
    return make_plan(_store(store), spec, dtype=dtype)


def _warned_plan(store: Store, spec: Spec, dtype: str | None) -> Plan:
    """The plan, with each of its warnings issued as a CompositionWarning."""
    the_plan = make_plan(store, spec, dtype=dtype)
    for message in the_plan.warnings:
        warnings.warn(message, CompositionWarning, stacklevel=3)
    return the_plan


def compose(
    spec: Spec,
    *,
    device: str | torch.device = "cpu",
    dtype: str | None = None,
    store: str | Path | Store | None = None,
    exact_peft: bool = False,
) -> tuple[PreTrainedModel, Any]:
    """Build the model a composition describes, tensor by tensor, on `device`
    (`cpu`, `cuda`, `cuda:N`, or `auto` to spread it with accelerate), in `dtype`.
    `exact_peft`: LoRA merges follow PEFT's own arithmetic bit for bit everywhere; by default
    one adapter is PEFT's merge bit for bit and several on one weight are one fused product,
    equal to float32 rounding (docs/composer.md).

    `spec` is a composition manifest (dict, or a JSON/YAML file) or a bank ref. Returns the
    model (in eval mode) and the base bank's tokenizer (None if it has none).

    Example:
        >>> spec = {"mes_version": "1", "base": "llama@v1", "steps": [{"op": "adapter.lora", "bank": "my-lora"}]}
        >>> model, tokenizer = compose(spec, device="cuda", dtype="bfloat16")  # doctest: +SKIP
    """
    resolved = _store(store)
    the_plan = _warned_plan(resolved, spec, dtype)
    return build_planned(the_plan, resolved, device, exact_peft), load_tokenizer(resolved, the_plan)


def build_planned(
    the_plan: Plan, store: Store, device: str | torch.device = "cpu", exact_peft: bool = False
) -> PreTrainedModel:
    """The model of an already validated plan, built on `device` (as `compose` does)."""
    return build_model(the_plan, Executor(store, "cpu" if device == "auto" else device, exact_peft), device)


def write(
    spec: Spec,
    *,
    out_dir: str | Path | None = None,
    name: str | None = None,
    dtype: str | None = None,
    message: str = "",
    max_shard_size: int | str | None = None,
    store: str | Path | Store | None = None,
    show_progress: bool = False,
    exact_peft: bool = False,
) -> ComposeResult:
    """Stream a composition to a from_pretrained folder (`out_dir`) and/or register it as
    bank `name`, never holding the whole model in memory. `exact_peft`: as for `compose`."""
    resolved = _store(store)
    the_plan = _warned_plan(resolved, spec, dtype)
    return write_composition(
        resolved, the_plan, out_dir=out_dir, name=name, message=message, max_shard_size=max_shard_size,
        show_progress=show_progress, exact_peft=exact_peft,
    )  # fmt: skip


def save_model(model: PreTrainedModel, the_plan: Plan, store: Store, out_dir: str | Path) -> None:
    """A model composed on a device, saved with save_pretrained plus the base's other files."""
    from weightbank.registry.checkpoints import staged_folder

    refuse_attachments(the_plan)
    with staged_folder(Path(out_dir)) as folder:
        model.save_pretrained(folder)
        missing = {path: record for path, record in the_plan.files.items() if not (folder / path).exists()}
        write_files(store, missing, folder, lambda _n: None)


def load_tokenizer(store: Store, the_plan: Plan) -> Any:
    """The base bank's tokenizer, or None if it has no tokenizer files."""
    if not any(name in the_plan.files for name in TOKENIZER_FILES):
        return None
    with tempfile.TemporaryDirectory(prefix="weightbank-tokenizer-") as scratch:
        folder = Path(scratch)
        write_files(store, the_plan.files, folder, lambda _n: None)
        (folder / MODEL_CONFIG).write_text(config_object(the_plan.config).to_json_string())
        return AutoTokenizer.from_pretrained(folder)


def verify_composition(
    spec: Spec,
    *,
    against: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    store: str | Path | Store | None = None,
    show_progress: bool = False,
) -> VerifyReport:
    """Compare the composed model with its oracle, or with bank `against` (composed at that
    bank's dtype); see `weightbank.composer.verify`."""
    return verify(_store(store), spec, against=against, tolerance=tolerance, show_progress=show_progress)
