"""Composition manifests: read from JSON or YAML, validated against MES v1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from weightbank.registry.errors import InputError
from weightbank.registry.manifests import validate


def load_spec(spec: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A composition manifest from a dict, a .json/.yaml file, or a bank ref (the bank alone).

    Raises InputError for unreadable files and SchemaError for invalid manifests.
    """
    if isinstance(spec, dict):
        document = spec
    elif Path(spec).is_file():
        document = _read(Path(spec))
    elif isinstance(spec, str) and not spec.endswith((".json", ".yaml", ".yml")):
        document = {"mes_version": "1", "base": spec, "steps": []}
    else:
        raise InputError(f"{spec}: no such composition file")
    validate(document, "composition", f"composition {spec if not isinstance(spec, dict) else ''}".strip())
    return document


def _read(path: Path) -> dict[str, Any]:
    text = path.read_text("utf-8")
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise InputError(f"{path}: not valid {kind}: {exc}".splitlines()[0]) from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: a composition manifest must be a mapping")
    return document
