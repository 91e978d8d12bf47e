"""MES v1 (Model Expansion Specification) JSON Schemas, shipped as package data.

Each `<name>.schema.json` here is a JSON Schema (draft 2020-12) document; `load(name)`
returns one, `resources()` all of them keyed by `$id` (they `$ref` each other by URL).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

NAMES = ("common", "bank", "composition", "ref-entry", "architecture", "signature")
BASE_URI = "https://weightbank.dev/mes/v1/"


@cache
def load(name: str) -> dict[str, Any]:
    """The schema document `<name>.schema.json`."""
    if name not in NAMES:
        raise KeyError(f"no MES v1 schema named {name!r}; known: {', '.join(NAMES)}")
    return json.loads(files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8"))


def resources() -> dict[str, dict[str, Any]]:
    """Every schema keyed by its `$id`."""
    return {load(name)["$id"]: load(name) for name in NAMES}
