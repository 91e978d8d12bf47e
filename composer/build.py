"""Building the runtime model: empty on the meta device, then filled tensor by tensor.

Each target tensor is computed by the executor on the device it will live on and handed
to accelerate's `set_module_tensor_to_device`; tied weights are re-tied, and buffers the
model computes itself (rotary tables) are moved beside their module. `device="auto"` uses
accelerate's `infer_auto_device_map` to spread the model over every GPU (and the CPU) and
`dispatch_model` to run it across them.
"""

from __future__ import annotations

import torch
from accelerate import dispatch_model
from accelerate.utils import infer_auto_device_map, set_module_tensor_to_device
from transformers import PreTrainedModel

from weightbank.registry.errors import InputError

from .dtypes import target_code, to_torch
from .executor import Executor
from .hf_model import config_object, meta_model
from .plan import Plan
from .tasks import Target


def resolve_device(device: str | torch.device) -> torch.device | str:
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto`; refuses devices this torch cannot use, in one line."""
    if device == "auto":
        return "auto"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N, mps or auto") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device} was asked for, but torch sees no CUDA device")
        if resolved.index is not None and resolved.index >= count:
            raise InputError(f"--device {device}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif resolved.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"--device {device}: this torch has no MPS (Apple GPU) support, or no such GPU is here")
    elif resolved.type != "cpu":
        raise InputError(f"--device {device}: weightbank builds models on cpu, cuda, cuda:N, mps or auto")
    return resolved


def build_model(plan: Plan, executor: Executor, device: str | torch.device = "cpu") -> PreTrainedModel:
    """The composed model, ready for inference, on `device`."""
    where = resolve_device(device)
    dtype = to_torch(target_code(plan.dtype))
    model = meta_model(config_object(plan.config), dtype)
    device_map: dict[str, torch.device | str | int] = _device_map(model, dtype) if where == "auto" else {"": where}
    needed = dict(model.state_dict(keep_vars=True))
    executor.prefetch(target for name, target in plan.targets.items() if name in needed)
    for name, target in plan.targets.items():
        if name not in needed:
            continue  # reported as a plan warning: from_pretrained ignores it too
        on = _device_for(name, device_map)
        set_module_tensor_to_device(model, name, on, value=executor.compute(target, on))
    model.tie_weights()
    for name, buffer in list(model.named_buffers()):
        on = _device_for(name, device_map)
        if buffer.device != torch.device(on):
            set_module_tensor_to_device(model, name, on, value=buffer)
    code = target_code(plan.dtype)
    for attached in plan.attachments:  # runtime modules (scaffold.attach), on their slot's device
        on = _device_for(f"{attached.module}.weight", device_map)
        tensors = {role: executor.compute(Target(task, code), on) for role, task in attached.tensors.items()}
        attached.install(model, tensors)
    if len(set(device_map.values())) > 1:
        model = dispatch_model(model, device_map)
    return model.eval()


def _device_map(model: PreTrainedModel, dtype: torch.dtype) -> dict[str, torch.device | str | int]:
    return infer_auto_device_map(model, no_split_module_classes=list(model._no_split_modules or []), dtype=dtype)


def _device_for(name: str, device_map: dict[str, torch.device | str | int]) -> torch.device:
    """The device of the longest module prefix of `name` in the map."""
    module = name
    while module not in device_map:
        if "." not in module:
            module = ""
            break
        module = module.rsplit(".", 1)[0]
    value = device_map[module]
    return torch.device(f"cuda:{value}" if isinstance(value, int) else value)
