"""Seeded fuzzing of what weightbank reads: safetensors headers, manifests and ref entries.

Damaged input is refused with weightbank's own errors (one line in the CLI), never a crash;
a header we accept is one safetensors accepts too; and no damaged ref entry is ever read
silently — the hash chain and the head record catch every change of bytes.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from weightbank.registry import Registry, Store, WeightbankError
from weightbank.registry.digest import digest_bytes
from weightbank.registry.manifests import manifest_path
from weightbank.registry.refs import entry_path, head_path
from weightbank.registry.safetensors_format import read_header

from fuzzing import mutate

SEED = 20261201


def _valid_file() -> bytes:
    tensors = {"a.weight": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16), "c": torch.arange(3)}
    return safetensors_save(tensors, metadata={"format": "pt"})


def test_damaged_safetensors_headers_are_refused_cleanly_and_never_beyond_safetensors() -> None:
    rng = random.Random(SEED)
    original = _valid_file()
    header_len = int.from_bytes(original[:8], "little")
    header, data = original[8 : 8 + header_len], original[8 + header_len :]
    accepted = 0
    for _ in range(1500):
        damaged_header = mutate(header, rng)
        damaged = len(damaged_header).to_bytes(8, "little") + damaged_header + data
        if rng.random() < 0.2:
            damaged = mutate(damaged, rng)
        try:
            read_header(io.BytesIO(damaged), len(damaged), "fuzz")
        except WeightbankError:
            continue
        accepted += 1
        safetensors_load(damaged)  # what we accept, safetensors accepts
    assert accepted < 1500  # the mutator does damage


@pytest.fixture(scope="module")
def store_with_history(tiny_folders, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-store")
    registry = Registry(root)
    for seed in range(3):
        registry.ingest(tiny_folders("llama", seed=seed), "m")
    return root


def test_damaged_manifests_are_refused_cleanly(store_with_history: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    store = Store(tmp_path / "store")
    original = Store(store_with_history).manifests.read_bytes(Store(store_with_history).resolve("m"))
    for _ in range(200):
        damaged = mutate(original, rng)
        digest = digest_bytes(damaged)
        store.backend.write_atomic(manifest_path(digest), [damaged])  # stored under its true digest
        try:
            document = store.manifests.get(digest)
        except WeightbankError:
            continue
        assert document["kind"] == "bank"  # anything accepted is a valid manifest


def test_no_damaged_ref_entry_is_read_silently(store_with_history: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    source = Store(store_with_history)
    targets = {v: source.refs.get("m", v).target for v in (1, 2, 3)}
    paths = [entry_path("m", v) for v in (1, 2, 3)] + [head_path("m")]
    for trial in range(160):
        root = tmp_path / f"s{trial}"
        (root / "refs").mkdir(parents=True)
        for path in paths:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes((store_with_history / path).read_bytes())
        victim = root / paths[trial % len(paths)]
        original = victim.read_bytes()
        damaged = mutate(original, rng)
        if damaged == original:
            continue
        victim.write_bytes(damaged)
        store = Store(root)
        with pytest.raises(WeightbankError):
            store.refs.history("m")
        for version, target in targets.items():
            with contextlib.suppress(WeightbankError):
                assert store.resolve(f"m@v{version}") == target  # never another bank
        with contextlib.suppress(WeightbankError):
            assert store.resolve("m") == targets[3]


def test_a_reordered_but_valid_ref_entry_is_caught(store_with_history: Path, tmp_path: Path) -> None:
    """Valid JSON, valid schema, another target: only the hash chain can tell."""
    root = tmp_path / "store"
    for path in [entry_path("m", v) for v in (1, 2, 3)] + [head_path("m")]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes((store_with_history / path).read_bytes())
    first = json.loads((root / entry_path("m", 1)).read_bytes())
    first["target"] = json.loads((root / entry_path("m", 2)).read_bytes())["target"]
    (root / entry_path("m", 1)).write_bytes(json.dumps(first, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(WeightbankError, match="v1 was rewritten"):
        Store(root).refs.history("m")
