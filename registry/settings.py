"""A store's own settings files (`remotes.json`, `trust.json`): small JSON documents at the
store's root, read strictly and replaced atomically by every change. They configure this store
only; a store opened as a remote is never asked for them."""

from __future__ import annotations

import json
from typing import Any

from .json_input import parse_json_object
from .store import Store


def read_settings(store: Store, path: str, what: str) -> dict[str, Any] | None:
    """The document at `path`, or None if the store has none (InputError if it is damaged)."""
    try:
        raw = store.backend.read_bytes(path)
    except FileNotFoundError:
        return None
    return parse_json_object(raw, f"{store.url}/{path}", what)


def write_settings(store: Store, path: str, document: dict[str, Any]) -> None:
    """Replace the document at `path` atomically (indented, for people who read it)."""
    store.backend.write_atomic(path, [json.dumps(document, indent=2).encode() + b"\n"])
