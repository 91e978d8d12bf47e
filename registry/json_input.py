"""JSON documents that arrive from outside (configs, shard indexes, safetensors headers).

Parsed strictly, so that nothing accepted here can fail later, after objects were written:
no NaN or Infinity (canonical JSON cannot hold them), no lone surrogates (UTF-8 cannot),
no nesting or numbers deep or big enough to crash the parser, and — where the format says so,
as safetensors does for its header — no duplicate keys.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InputError


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {key!r}")
        seen.add(key)
    return dict(pairs)


def parse_json_object(raw: bytes | str, where: str, what: str, *, unique_keys: bool = False) -> dict[str, Any]:
    """Parse `raw` as a JSON object, or raise InputError naming `where` and `what`."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        document = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique if unique_keys else None)
        json.dumps(document, ensure_ascii=False).encode("utf-8")  # lone surrogates cannot be stored
    except RecursionError:
        raise InputError(f"{where}: {what} is nested too deeply") from None
    except (UnicodeError, ValueError) as exc:  # JSONDecodeError, NaN, the integer digit limit
        raise InputError(f"{where}: {what} is not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise InputError(f"{where}: {what} is not a JSON object")
    return document
