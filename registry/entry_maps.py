"""The `tensors` and `files` maps of a bank manifest, checked against MES v1 at Python speed.

jsonschema spends 0.1–0.2 ms on each entry of these maps (a `$ref` resolution per keyword),
which made reading a 5,000-tensor manifest take a second. The subschemas involved are small
and flat, so this module checks them with plain Python — the same rules, their constants
(patterns, the dtype enum) read from the schema files themselves — and `manifests.validate`
gives jsonschema the rest of the document. It is only a fast path: it never decides that a
document is invalid (then jsonschema checks the whole document and words the error), so a
disagreement could only make a reader accept what the schema refuses, and `SUBSCHEMAS` (pinned
by tests/test_manifest_checks.py against the schema files, and against jsonschema on mutated
entries) guards exactly that.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache
from typing import Any

from weightbank import schemas

# The subschemas this module implements; if one of them changes, this module must change.
SUBSCHEMAS = {
    ("bank", "properties", "tensors"): {
        "description": "State-dict key -> tensor object.",
        "type": "object",
        "propertyNames": {"$ref": "common.schema.json#/$defs/tensorName"},
        "additionalProperties": {"$ref": "#/$defs/tensor"},
    },
    ("bank", "properties", "files"): {
        "description": "Relative path in the model folder -> file object (tokenizer, configs, README...).",
        "type": "object",
        "propertyNames": {"$ref": "common.schema.json#/$defs/relativePath"},
        "additionalProperties": {"$ref": "#/$defs/file"},
    },
    ("bank", "$defs", "tensor"): {
        "type": "object",
        "required": ["digest", "dtype", "shape", "bytes"],
        "additionalProperties": False,
        "properties": {
            "digest": {"$ref": "common.schema.json#/$defs/digest"},
            "dtype": {"$ref": "common.schema.json#/$defs/dtype"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "bytes": {"description": "Size of the tensor's data (not of the object).", "type": "integer", "minimum": 0},
        },
    },
    ("bank", "$defs", "file"): {
        "type": "object",
        "required": ["digest", "bytes"],
        "additionalProperties": False,
        "properties": {
            "digest": {"$ref": "common.schema.json#/$defs/digest"},
            "bytes": {"type": "integer", "minimum": 0},
        },
    },
}
_TENSOR_KEYS = frozenset(("digest", "dtype", "shape", "bytes"))
_FILE_KEYS = frozenset(("digest", "bytes"))


def subschema(path: tuple[str, ...]) -> Any:
    """The part of a schema file at `path` (schema name first)."""
    node: Any = schemas.load(path[0])
    for key in path[1:]:
        node = node[key]
    return node


@cache
def _common() -> tuple[Callable[[str], Any], Callable[[str], Any], Callable[[str], Any], frozenset[str]]:
    """(digest, tensor name, relative path) pattern searches and the dtype names, from common.schema.json.
    jsonschema's `pattern` is `re.search`, so is ours."""
    defs = schemas.load("common")["$defs"]
    digest, name, path = (re.compile(defs[key]["pattern"]).search for key in ("digest", "tensorName", "relativePath"))
    return digest, name, path, frozenset(defs["dtype"]["enum"])


def _count(value: Any) -> bool:
    """JSON Schema's `{"type": "integer", "minimum": 0}`: jsonschema counts 3.0 as an integer, not True."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, float) and value.is_integer() and value >= 0


def entry_maps_valid(document: dict[str, Any]) -> bool:
    """Whether the bank's `tensors` and `files` maps certainly satisfy their subschemas.
    False means "let jsonschema decide" (it may still be valid)."""
    digest, tensor_name, relative_path, dtypes = _common()
    tensors, files = document.get("tensors"), document.get("files")
    if not isinstance(tensors, dict) or not isinstance(files, dict):
        return False
    for name, tensor in tensors.items():
        if not (isinstance(tensor, dict) and tensor.keys() == _TENSOR_KEYS and tensor_name(name)):
            return False
        shape, code, text = tensor["shape"], tensor["dtype"], tensor["digest"]
        if not (isinstance(text, str) and digest(text) and isinstance(code, str) and code in dtypes):
            return False
        if not (isinstance(shape, list) and all(_count(d) for d in shape) and _count(tensor["bytes"])):
            return False
    for path, record in files.items():
        if not (isinstance(record, dict) and record.keys() == _FILE_KEYS and relative_path(path)):
            return False
        if not (isinstance(record["digest"], str) and digest(record["digest"]) and _count(record["bytes"])):
            return False
    return True
