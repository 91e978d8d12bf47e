"""Tensor objects, manifests' canonical form, and the MES v1 schemas themselves."""

from __future__ import annotations

import io
import json

import jsonschema
import pytest
import torch
from safetensors.torch import load, save

from weightbank import schemas
from weightbank.registry import IntegrityError, Store
from weightbank.registry.digest import digest_bytes
from weightbank.registry.manifests import canonical_json, validate
from weightbank.registry.safetensors_format import DTYPE_SIZES, read_header


def test_tensor_object_is_canonical_safetensors_and_dedups_across_names() -> None:
    store = Store("memory://objects-test")
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    data = tensor.numpy().tobytes()
    first = store.objects.put_tensor("F32", (3, 4), data)
    again = store.objects.put_tensor("F32", (3, 4), bytearray(data))
    assert first.created and not again.created and first.digest == again.digest

    raw = store.objects.read(first.digest)
    assert torch.equal(load(raw)["tensor"], tensor)  # safetensors itself reads it
    # Canonical: exactly what safetensors writes for {"tensor": t} with no metadata.
    assert raw == save({"tensor": tensor})
    header = read_header(io.BytesIO(raw), len(raw), "object")
    assert header.metadata is None and list(header.tensors) == ["tensor"]

    other_shape = store.objects.put_tensor("F32", (4, 3), data)
    assert other_shape.digest != first.digest  # same bytes, different tensor


def test_corrupted_memory_object_is_detected() -> None:
    store = Store("memory://objects-corrupt")
    put = store.objects.put(b"tokenizer bytes")
    assert put.digest == digest_bytes(b"tokenizer bytes")
    path = f"{store.backend.root}/objects/{put.digest[7:9]}/{put.digest[7:]}"
    store.backend.fs.pipe_file(path, b"tokenizer bytez")
    with pytest.raises(IntegrityError, match=put.digest):
        store.objects.read(put.digest)


def test_schemas_are_valid_2020_12_and_shipped() -> None:
    for name in schemas.NAMES:
        document = schemas.load(name)
        jsonschema.Draft202012Validator.check_schema(document)
        assert document["$id"] == f"{schemas.BASE_URI}{name}.schema.json"


def test_schema_dtypes_match_the_byte_layer() -> None:
    assert set(schemas.load("common")["$defs"]["dtype"]["enum"]) == set(DTYPE_SIZES)


@pytest.mark.parametrize(
    ("schema", "document", "ok"),
    [
        ("composition", {"mes_version": "1", "base": "llama@v1", "steps": [{"op": "adapter.lora", "bank": "x"}]}, True),
        ("composition", {"mes_version": "1", "base": "llama", "steps": [{"bank": "x"}]}, False),
        ("composition", {"mes_version": "2", "base": "llama", "steps": []}, False),
        ("ref-entry", {"mes_version": "1", "kind": "ref", "name": "a", "version": 1, "target": "blake3:" + "0" * 64,
                       "action": "rollback", "time": "2026-01-01T00:00:00Z", "agent": "me"}, False),
        ("architecture", {"mes_version": "1", "kind": "architecture", "family": "llama", "model_type": "llama",
                          "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128,
                          "vocab": 128, "norm": {"type": "RMSNorm", "placement": "pre", "eps": 1e-6},
                          "attention": "GQA", "positions": "rope", "tied_embeddings": False, "mlp": "swiglu",
                          "parameters": 1}, True),
    ],
)  # fmt: skip
def test_schema_examples(schema: str, document: dict, ok: bool) -> None:
    if ok:
        validate(document, schema, "example")
    else:
        with pytest.raises(Exception, match="not a valid MES v1"):
            validate(document, schema, "example")


def test_canonical_json_is_stable() -> None:
    document = {"b": [1, 2.5, 1e-06], "a": {"z": "é", "y": None}}
    data = canonical_json(document)
    assert data == b'{"a":{"y":null,"z":"\xc3\xa9"},"b":[1,2.5,1e-06]}'
    assert canonical_json(json.loads(data)) == data
