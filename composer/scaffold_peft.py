"""PEFT as the second peer of a `lora` scaffold: its seeds loaded into a PEFT LoRA model with
exactly their ranks and alphas, each layer's scale set to the seed's alpha (PEFT's `set_scale`,
so scaling = α·lora_alpha/r, or /√r with rsLoRA, computed by PEFT), then `merge_and_unload`."""

from __future__ import annotations

import re
from typing import Any

from torch import nn
from transformers.pytorch_utils import Conv1D

from weightbank.registry.errors import InputError

from .oracle import OracleContext
from .seed_modules import oracle_seeds, read_tensor

PREFIX = "base_model.model."


def peft_merge(model: nn.Module, step: dict[str, Any], context: OracleContext) -> tuple[str, nn.Module] | None:
    """(description, merged model), or None unless every seed of the step is a lora seed and
    they share PEFT's per-adapter settings (rsLoRA, fan_in_fan_out)."""
    try:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from peft.tuners.lora import LoraLayer
    except ImportError:
        raise InputError("verify needs PEFT for lora scaffolds (pip install peft)") from None
    seeds = oracle_seeds(step, context)
    if not seeds or any(seed.kind != "lora" for seed, _ in seeds):
        return None
    rslora = {seed.options["use_rslora"] for seed, _ in seeds}
    conv1d = {isinstance(model.get_submodule(seed.slot), Conv1D) for seed, _ in seeds}
    if len(rslora) > 1 or len(conv1d) > 1:
        return None
    first = seeds[0][0].options
    config = LoraConfig(
        r=first["r"],
        lora_alpha=first["lora_alpha"],
        target_modules=[seed.slot for seed, _ in seeds],
        rank_pattern={re.escape(seed.slot): seed.options["r"] for seed, _ in seeds},
        alpha_pattern={re.escape(seed.slot): seed.options["lora_alpha"] for seed, _ in seeds},
        use_rslora=rslora.pop(),
        fan_in_fan_out=conv1d.pop(),
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, config)
    weights = {
        f"{PREFIX}{seed.slot}.{role}": read_tensor(context, record.digest)
        for seed, _ in seeds
        for role, record in seed.tensors.items()
    }
    unexpected: list[str] = set_peft_model_state_dict(peft_model, weights).unexpected_keys  # type: ignore[attr-defined]
    if unexpected:
        raise InputError(f"PEFT did not take the seeds {unexpected[:3]}")
    alphas = {seed.slot: alpha for seed, alpha in seeds}
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", alphas[name.removeprefix(PREFIX)])
    return "PEFT merge_and_unload at scale α·s", peft_model.merge_and_unload()
