"""dtype names: safetensors codes (`F32`), config/CLI names (`float32`), torch dtypes.

One explicit table of our own (safetensors' private `_TYPES` is not an API, and lacks F8_E8M0):
every safetensors code weightbank reads (`safetensors_format.DTYPE_SIZES`) → the torch dtype's
name, looked up on the installed torch (older releases lack some).
"""

from __future__ import annotations

import torch

from weightbank.registry.errors import InputError

TORCH_DTYPES: dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8",
    "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "I16": "int16", "U16": "uint16", "F16": "float16", "BF16": "bfloat16",
    "I32": "int32", "U32": "uint32", "F32": "float32",
    "C64": "complex64", "F64": "float64", "I64": "int64", "U64": "uint64",
}  # fmt: skip
# The dtypes a composed model can be asked for (--dtype, the manifest's `dtype`).
TARGET_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def to_torch(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code."""
    name = TORCH_DTYPES.get(code)
    dtype = getattr(torch, name, None) if name is not None else None
    if not isinstance(dtype, torch.dtype):
        reason = "this torch has no" if name is not None else "no"
        raise InputError(f"dtype {code}: {reason} torch equivalent")
    return dtype


def from_torch(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype."""
    for code, name in TORCH_DTYPES.items():
        if getattr(torch, name, None) == dtype:
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
