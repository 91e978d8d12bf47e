"""`verify`'s oracle for `merge.*` steps: mergekit itself, run in-process on exported folders.

The model built so far (the base, with earlier steps applied) is saved as the base model's folder;
every other input is exported from the store. mergekit merges in float32 and the result is loaded
with transformers' `from_pretrained`. For DARE, mergekit's random drop is replaced by ours (its
own stream cannot be reproduced; see `operators/merge_dare.py`), so the comparison checks
everything else: the rescale, the sign election, the combination.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.utils import logging as transformers_logging

from weightbank.registry.errors import InputError

from .architectures import Layout
from .hf_model import model_class
from .merge_parameters import MergeMethod
from .mergekit_config import to_mergekit
from .oracle import OracleContext

_runs = count()


def run_mergekit(
    model: PreTrainedModel,
    step: dict[str, Any],
    context: OracleContext,
    method: MergeMethod,
    *,
    merge_method: str | None = None,
    dare_seed: int | None = None,
) -> PreTrainedModel:
    """mergekit's merge of the step's models, loaded with from_pretrained (float32, CPU)."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import MergeOptions, run_merge
    except ImportError:
        raise InputError("verify needs mergekit for merge steps (pip install mergekit)") from None
    scratch = context.scratch / f"mergekit-{next(_runs)}"
    base_folder = scratch / "base"
    model.save_pretrained(base_folder)
    base_digest = context.base

    def path_of(ref: str) -> str:
        if context.store.resolve(ref) == base_digest:
            return str(base_folder)
        return str(context.export(ref))

    config = to_mergekit(
        step, merge_method or method.mergekit, path_of, str(base_folder) if method.needs_base else None
    )
    out = scratch / "merged"
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # mergekit sets the deprecated torch_dtype
    try:
        with _dare_stream(dare_seed, step, path_of, Layout(model.config.to_dict())):
            run_merge(
                MergeConfiguration.model_validate(config),
                str(out),
                MergeOptions(copy_tokenizer=False, quiet=True, lazy_unpickle=False, write_model_card=False),
            )
    except Exception as exc:  # mergekit's own failures (e.g. its Qwen2 passthrough config) become one line
        raise InputError(f"mergekit could not run this merge: {' '.join(str(exc).split())}") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    config_object = type(model.config).from_pretrained(out)
    return model_class(config_object).from_pretrained(out, dtype=torch.float32).eval()


@contextmanager
def _dare_stream(seed: int | None, step: dict[str, Any], path_of: Any, layout: Layout) -> Iterator[None]:
    """While mergekit runs, its DARE draws come from our stream: each entry's position in the
    step and the output tensor's name select the same mask our kernel uses."""
    if seed is None:
        yield
        return
    from mergekit.merge_methods import generalized_task_arithmetic as gta
    from mergekit.sparsify import SparsificationMethod, rescaled_masked_tensor

    from .operators.merge_dare import keep_mask

    pending = threading.local()
    positions = _positions(step, path_of, layout)
    original_group, original_sparsify = gta.GeneralizedTaskArithmeticMerge.merge_group, gta.sparsify

    def merge_group(self: Any, group: Any, /, **parameters: Any) -> Any:
        name = group.metadata.name
        pending.queue = [(name, positions(name)[str(entry.id)]) for entry in group.non_base]
        return original_group(self, group, **parameters)

    def sparsify(tensor: torch.Tensor, density: float, method: Any, **options: Any) -> torch.Tensor:
        name, position = pending.queue.pop(0)
        if method != SparsificationMethod.random or density >= 1:
            return original_sparsify(tensor, density, method, **options)
        mask = keep_mask(seed, name, position, tensor.numel(), density).view_as(tensor).to(tensor)
        return rescaled_masked_tensor(tensor, mask, options.get("rescale_norm"))

    gta.GeneralizedTaskArithmeticMerge.merge_group = merge_group  # type: ignore[method-assign]
    gta.sparsify = sparsify
    try:
        yield
    finally:
        gta.GeneralizedTaskArithmeticMerge.merge_group = original_group  # type: ignore[method-assign]
        gta.sparsify = original_sparsify


def _positions(step: dict[str, Any], path_of: Any, layout: Layout) -> Any:
    """output tensor name → {model folder: position in its list} (the slice that tensor is from)."""
    if "models" in step:
        fixed = {path_of(e["bank"]): i for i, e in enumerate(step["models"])}
        return lambda _name: fixed
    slices = [{path_of(s["bank"]): i for i, s in enumerate(piece["sources"])} for piece in step["slices"]]
    owner: list[int] = []
    for number, piece in enumerate(step["slices"]):
        start, stop = piece["sources"][0]["layers"]
        owner.extend([number] * (stop - start))

    merged = Layout({**layout.config, layout.key("layers"): len(owner)})

    def positions(name: str) -> dict[str, int]:
        layer = merged.layer_of(name)
        if layer is None:
            return slices[0] if layout.is_input_side(name) else slices[-1]
        return slices[owner[layer]]

    return positions
