"""Manifest reads stay fully checked while costing what they must: the entry maps at Python
speed (never accepting what the schema refuses), and each digest checked once per process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from weightbank.registry import IntegrityError, SchemaError, Store
from weightbank.registry import manifests as manifests_module
from weightbank.registry.banks import TensorRecord, new_bank_manifest
from weightbank.registry.entry_maps import SUBSCHEMAS, entry_maps_valid, subschema
from weightbank.registry.manifests import canonical_json, manifest_path, validate
from weightbank.registry.provenance import new_activity

DIGEST = "blake3:" + "ab" * 32


def _bank(tensors: int = 3) -> dict[str, Any]:
    records = {f"model.layers.{i}.weight": TensorRecord(DIGEST, "BF16", (4, 2), 16) for i in range(tensors)}
    return new_bank_manifest(
        "base", tensors=records, files={}, parents=[], activity=new_activity("ingest", {}, ""), config={"a": 1}
    )


def test_the_fast_check_implements_the_schema_files_as_they_are() -> None:
    for path, expected in SUBSCHEMAS.items():
        assert subschema(path) == expected, f"{'/'.join(path)} changed: update registry/entry_maps.py"
    assert entry_maps_valid(_bank())  # valid maps take the fast path


TENSOR_MUTATIONS: list[tuple[str, Any]] = [
    ("digest", "blake3:" + "AB" * 32), ("digest", "sha256:" + "ab" * 32), ("digest", 7), ("dtype", "F4"),
    ("dtype", ["BF16"]), ("shape", [4, -1]), ("shape", [4, True]), ("shape", [4.0, 2]), ("shape", [4.5]),
    ("shape", "4,2"), ("bytes", -1), ("bytes", 16.0), ("bytes", False), ("bytes", None), ("extra", 1),
]  # fmt: skip
NAMES = ["model..weight", "/abs", "a\nb", "ok.name", "\\win", ""]
FILES = [("tokenizer.json", 5), ("../up", 5), ("a/./b", 5), ("C:x", 5), ("ok", -2), ("ok", 2.0)]


@pytest.mark.parametrize("mutation", TENSOR_MUTATIONS + [("drop", "digest")] + [("name", n) for n in NAMES])
def test_the_fast_check_never_accepts_what_jsonschema_refuses(mutation: tuple[str, Any]) -> None:
    document = _bank()
    entry = document["tensors"]["model.layers.0.weight"]
    key, value = mutation
    if key == "drop":
        del entry[value]
    elif key == "name":
        document["tensors"][value] = document["tensors"].pop("model.layers.0.weight")
    else:
        entry[key] = value
    try:
        validate(document, "bank", "it")
        schema_ok = True
    except SchemaError:
        schema_ok = False
    assert not entry_maps_valid(document) or schema_ok


@pytest.mark.parametrize(("path", "size"), FILES)
def test_file_entries_agree_with_jsonschema(path: str, size: Any) -> None:
    document = _bank()
    document["files"] = {path: {"digest": DIGEST, "bytes": size}}
    try:
        validate(document, "bank", "it")
        schema_ok = True
    except SchemaError:
        schema_ok = False
    assert entry_maps_valid(document) == schema_ok


def test_manifest_errors_read_as_before(tmp_path) -> None:
    """A bad entry is still worded by jsonschema, and the rest of a document is still checked."""
    store = Store(tmp_path / "s")
    bad = _bank()
    bad["tensors"]["model.layers.1.weight"]["dtype"] = "F4"
    with pytest.raises(SchemaError, match=r"at tensors/model\.layers\.1\.weight/dtype: .F4. is not one of"):
        store.manifests.put(bad)
    unknown = {**_bank(), "surprise": 1}
    with pytest.raises(SchemaError, match="Additional properties are not allowed"):
        store.manifests.put(unknown)


def test_each_digest_is_checked_once_per_process_and_every_read_rehashes(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path / "s")
    document = _bank(5)
    data = canonical_json(document)
    path = tmp_path / "s" / manifest_path(manifests_module.digest_bytes(data))
    path.parent.mkdir(parents=True)
    path.write_bytes(data)  # written by hand: never validated in this process
    digest = manifests_module.digest_bytes(data)
    manifests_module._VALID.discard(digest)
    calls: list[str] = []
    real = manifests_module.validate_manifest
    monkeypatch.setattr(manifests_module, "validate_manifest", lambda doc, what: (calls.append(what), real(doc, what)))
    assert store.manifests.get(digest) == document
    assert store.manifests.get(digest) == document
    assert len(calls) == 1
    damaged = data.replace(b'"BF16"', b'"F16\\u0020"', 1)
    path.write_bytes(damaged)
    with pytest.raises(IntegrityError, match="is corrupt"):
        store.manifests.get(digest)
    # A document that fails its checks is never remembered as valid.
    invalid = json.loads(data)
    invalid["tensors"]["model.layers.0.weight"]["bytes"] = 15
    bad = canonical_json(invalid)
    bad_digest = manifests_module.digest_bytes(bad)
    bad_path = tmp_path / "s" / manifest_path(bad_digest)
    bad_path.parent.mkdir(parents=True, exist_ok=True)
    bad_path.write_bytes(bad)
    for _ in range(2):
        with pytest.raises(SchemaError, match="says 15 bytes"):
            store.manifests.get(bad_digest)
