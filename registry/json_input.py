"""JSON documents that arrive from outside (configs, shard indexes, safetensors headers)."""

from __future__ import annotations

import json
from typing import Any

from .errors import InputError


def parse_json_object(raw: bytes | str, where: str, what: str) -> dict[str, Any]:
    """Parse `raw` as a JSON object, or raise InputError naming `where` and `what`."""
    try:
        document = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{where}: {what} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise InputError(f"{where}: {what} is not a JSON object")
    return document
