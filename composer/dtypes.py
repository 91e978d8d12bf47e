"""dtype names: safetensors codes (`F32`), config/CLI names (`float32`), torch dtypes."""

from __future__ import annotations

import torch
from safetensors.torch import _TYPES as _SAFETENSORS_TO_TORCH

from weightbank.registry.errors import InputError

# The dtypes a composed model can be asked for (--dtype, the manifest's `dtype`).
TARGET_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def to_torch(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code."""
    dtype = _SAFETENSORS_TO_TORCH.get(code)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"dtype {code} has no torch equivalent")
    return dtype


def from_torch(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype."""
    for code, candidate in _SAFETENSORS_TO_TORCH.items():
        if candidate == dtype:
            return code
    raise InputError(f"torch dtype {dtype} has no safetensors code")


def target_code(name: str) -> str:
    """`float32` → `F32`; refuses anything a model cannot be composed in."""
    try:
        return TARGET_DTYPES[name]
    except KeyError:
        raise InputError(f"unsupported dtype {name!r}: choose one of {', '.join(TARGET_DTYPES)}") from None


def is_floating(code: str) -> bool:
    return to_torch(code).is_floating_point
