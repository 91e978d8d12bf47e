"""Manifests: canonical JSON documents, validated against MES v1, named by their digest.

Bank and composition manifests live under `manifests/<2 hex>/<64 hex>`. The canonical
form is UTF-8 JSON with sorted keys and no insignificant whitespace, so equal documents
have equal digests; a reader checks the digest, the canonical form and the schema.

A manifest is content-addressed, so bytes that hash to a digest whose document passed those
checks once are that same valid document: each digest is checked in full once per process
(`_VALID`), and later reads only re-hash the bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
from referencing import Registry as SchemaRegistry
from referencing import Resource

from weightbank import schemas

from .backends import Backend
from .digest import PREFIX, digest_bytes, hex_of, is_digest
from .entry_maps import entry_maps_valid
from .errors import IntegrityError, NotFoundError, SchemaError
from .safetensors_format import DTYPE_SIZES
from .temporaries import TEMP_PREFIX

MANIFESTS_DIR = "manifests"
# Which schema a stored document validates against, by its "kind".
SCHEMA_OF_KIND = {"bank": "bank", "composition": "composition", "ref": "ref-entry", "architecture": "architecture"}
# Digests of manifests whose bytes this process has found canonical and valid (see the module docstring).
_VALID: set[str] = set()


def canonical_json(document: Any) -> bytes:
    """The canonical bytes of a JSON document."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


@cache
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    registry: SchemaRegistry = SchemaRegistry().with_resources(
        (uri, Resource.from_contents(doc)) for uri, doc in schemas.resources().items()
    )
    return jsonschema.Draft202012Validator(schemas.load(schema_name), registry=registry)


def validate(document: Any, schema_name: str, what: str) -> None:
    """Raise SchemaError (one line: where and why) unless `document` matches the schema."""
    error = jsonschema.exceptions.best_match(_validator(schema_name).iter_errors(document))
    if error is not None:
        location = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SchemaError(f"{what} is not a valid MES v1 {schema_name}: at {location}: {error.message}")


def validate_manifest(document: Any, what: str) -> None:
    """Validate a bank or composition manifest, choosing the schema by its `kind`."""
    kind = document.get("kind") if isinstance(document, dict) else None
    if kind not in ("bank", "composition"):
        raise SchemaError(f"{what} is not a MES v1 manifest: 'kind' must be 'bank' or 'composition', got {kind!r}")
    if kind == "bank" and entry_maps_valid(document):  # the per-entry part at Python speed
        validate({**document, "tensors": {}, "files": {}}, "bank", what)
    else:
        validate(document, SCHEMA_OF_KIND[kind], what)
    if kind == "bank":
        _check_tensor_sizes(document, what)


def _check_tensor_sizes(document: dict[str, Any], what: str) -> None:
    """A tensor's `bytes` must be what its dtype and shape take (export writes headers from them)."""
    for name, tensor in document["tensors"].items():
        expected = math.prod(tensor["shape"]) * DTYPE_SIZES[tensor["dtype"]]
        if tensor["bytes"] != expected:
            raise SchemaError(
                f"{what} is not a valid MES v1 bank: tensor {name!r} says {tensor['bytes']} bytes but "
                f"{tensor['dtype']}{tensor['shape']} takes {expected}"
            )


def manifest_path(digest: str) -> str:
    hex_digest = hex_of(digest)
    return f"{MANIFESTS_DIR}/{hex_digest[:2]}/{hex_digest}"


class ManifestStore:
    """Content-addressed manifests on a backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def put(self, document: dict[str, Any]) -> str:
        """Validate and store a manifest; return its digest."""
        validate_manifest(document, "manifest")
        data = canonical_json(document)
        digest = digest_bytes(data)
        if not self.backend.freshen(manifest_path(digest)):  # reused manifests are marked used, for gc
            self.backend.write_atomic(manifest_path(digest), [data])
        _VALID.add(digest)
        return digest

    def has(self, digest: str) -> bool:
        return self.backend.exists(manifest_path(digest))

    def read_bytes(self, digest: str) -> bytes:
        """The stored bytes of a manifest, digest-checked (not parsed)."""
        try:
            data = self.backend.read_bytes(manifest_path(digest))
        except FileNotFoundError:
            raise NotFoundError(f"manifest {digest} is missing from the store at {self.backend.url}") from None
        actual = digest_bytes(data)
        if actual != digest:
            raise IntegrityError(f"manifest {digest} is corrupt: its bytes hash to {actual}")
        return data

    def get(self, digest: str) -> dict[str, Any]:
        """A manifest, verified: digest, canonical form and schema (the last two once per process)."""
        data = self.read_bytes(digest)
        if digest in _VALID:
            return json.loads(data)
        what = f"manifest {digest}"
        try:
            document = json.loads(data)
            canonical = canonical_json(document)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # also NaN, 4,300+ digit numbers
            raise IntegrityError(f"{what} is not canonical JSON ({exc})") from None
        if canonical != data:
            raise IntegrityError(f"{what} is not in canonical form")
        validate_manifest(document, what)
        _VALID.add(digest)
        return document

    def __iter__(self) -> Iterator[str]:
        for path in self.backend.walk(MANIFESTS_DIR):
            name = path.rpartition("/")[2]
            if not name.startswith(TEMP_PREFIX) and is_digest(PREFIX + name):
                yield PREFIX + name

    def remove(self, digest: str) -> None:
        self.backend.remove(manifest_path(digest))
