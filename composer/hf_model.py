"""transformers glue: config dicts → config objects, model classes, empty (meta) models."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import transformers
from accelerate import init_empty_weights
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from weightbank.registry.errors import InputError

from .tasks import Target


def config_object(config: dict[str, Any]) -> PretrainedConfig:
    """The transformers config for a config.json dict."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise InputError("the config has no model_type")
    try:
        return AutoConfig.for_model(**config)
    except (ValueError, KeyError, StrictDataclassError) as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"transformers refuses the {model_type} config: {reason}") from None


def model_class(config: PretrainedConfig, tensor_names: Collection[str] = ()) -> type[PreTrainedModel]:
    """The config's first architecture; without one, the causal-LM or bare model class whose
    parameter names cover most of `tensor_names` (what the checkpoint was saved from)."""
    for name in config.architectures or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            return cls
    candidates: list[type[PreTrainedModel]] = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        if type(config) in auto._model_mapping:
            found = auto._model_mapping[type(config)]
            cls = found[0] if isinstance(found, tuple) else found
            if isinstance(cls, type) and issubclass(cls, PreTrainedModel):
                candidates.append(cls)
    if not candidates:
        raise InputError(f"transformers has no model class for config type {type(config).__name__}")
    names = set(tensor_names)

    def coverage(cls: type[PreTrainedModel]) -> int:
        with init_empty_weights(include_buffers=True):
            return len(names & cls._from_config(config).state_dict().keys())

    return max(candidates, key=coverage) if names and len(candidates) > 1 else candidates[0]


def meta_model(config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    """The model with parameters on the meta device and real buffers (rotary tables and the
    like are computed by the model itself). Weight initialisation is skipped, as
    from_pretrained skips it: every parameter is about to be replaced."""
    with init_empty_weights(include_buffers=False), _no_init_weights():
        model = model_class(config)._from_config(config, dtype=dtype)
    return model.eval()


def _no_init_weights() -> AbstractContextManager[object]:
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # a transformers without it: initialising meta tensors is only slower
        return nullcontext()
    return no_init_weights()


def torch_dtype_of(config: dict[str, Any]) -> torch.dtype:
    return getattr(torch, config.get("dtype", "float32"))


def check_against_model(config: dict[str, Any], targets: dict[str, Target], warnings: list[str]) -> list[str]:
    """Problems if the tensors do not match what transformers builds from `config`: missing
    parameters, wrong shapes. Tensors the model does not use become warnings (from_pretrained
    ignores them too). A config without `architectures` gets the class that fits the tensors."""
    try:
        config_obj = config_object(config)
        if not config.get("architectures"):
            config["architectures"] = [model_class(config_obj, targets.keys()).__name__]
            config_obj.architectures = config["architectures"]
        model = meta_model(config_obj, torch_dtype_of(config))
    except (InputError, ValueError, TypeError, AttributeError) as exc:
        return [f"target config: {exc}"]
    model.tie_weights()
    problems = []
    state = model.state_dict(keep_vars=True)
    for name, param in model.named_parameters(remove_duplicate=True):
        target = targets.get(name)
        if target is None:
            problems.append(f"the model needs {name}, which no bank or step provides")
        elif tuple(param.shape) != target.shape:
            problems.append(f"{name} is {list(target.shape)} but the model expects {list(param.shape)}")
    for name, target in targets.items():
        if name not in state:
            warnings.append(f"{name} is not used by {type(model).__name__}")
        elif tuple(state[name].shape) != target.shape:
            problems.append(f"{name} is {list(target.shape)} but the model expects {list(state[name].shape)}")
    unique = list(dict.fromkeys(problems))
    if len(unique) > 8:
        unique = [*unique[:8], f"and {len(unique) - 8} more"]
    return unique
