"""Dedup across names and versions, log, rollback, refs and ref syntax."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from weightbank.registry import InputError, NotFoundError, Registry

from helpers import Cli


def object_count(store: Path) -> int:
    return sum(1 for p in (store / "objects").rglob("*") if p.is_file())


def test_same_model_under_another_name_adds_no_objects(tiny_folders, wb: Cli, store_dir: Path) -> None:
    source = tiny_folders("qwen2")
    wb("ingest", source, "--name", "first")
    before = object_count(store_dir)
    result = json.loads(wb("ingest", source, "--name", "second", "--json").stdout)
    assert result["new_objects"] == 0 and result["new_bytes"] == 0
    assert object_count(store_dir) == before


def test_changing_one_tensor_adds_one_object(tiny_folders, copy_folder, wb: Cli, store_dir: Path) -> None:
    folder = copy_folder(tiny_folders("llama"))
    wb("ingest", folder, "--name", "model")
    before = object_count(store_dir)
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"] = tensors["model.layers.1.mlp.up_proj.weight"] + 1
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    result = json.loads(wb("ingest", folder, "--name", "model", "--json").stdout)
    assert (result["version"], result["new_objects"]) == (2, 1)
    assert object_count(store_dir) == before + 1


def test_reingest_unchanged_model_makes_no_new_version(tiny_folders, wb: Cli) -> None:
    source = tiny_folders("mistral")
    wb("ingest", source, "--name", "m")
    again = json.loads(wb("ingest", source, "--name", "m", "--json").stdout)
    assert again["unchanged"] and again["version"] == 1
    assert len(json.loads(wb("log", "m", "--json").stdout)) == 1


def test_log_and_rollback(tiny_folders, copy_folder, wb: Cli) -> None:
    folder = copy_folder(tiny_folders("llama"))
    wb("ingest", folder, "--name", "model", "-m", "first")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    wb("ingest", folder, "--name", "model", "-m", "second")

    history = json.loads(wb("log", "model", "--json", "--reverse").stdout)
    assert [e["version"] for e in history] == [1, 2]
    assert [e["message"] for e in history] == ["first", "second"]
    assert history[0]["target"] != history[1]["target"]
    text_log = wb("log", "model").stdout.splitlines()  # newest first, as git log
    assert text_log[0].startswith("v2 ") and "second" in text_log[0] and text_log[1].startswith("v1 ")

    wb("rollback", "model", "--to", "1")
    history = json.loads(wb("log", "model", "--json", "--reverse").stdout)
    assert [e["version"] for e in history] == [1, 2, 3]
    assert history[2]["target"] == history[0]["target"]
    assert (history[2]["action"], history[2]["rollback_to"]) == ("rollback", 1)
    assert json.loads(wb("show", "model", "--json").stdout)["digest"] == history[0]["target"]
    assert json.loads(wb("show", "model@v2", "--json").stdout)["digest"] == history[1]["target"]

    refs = json.loads(wb("refs", "--json").stdout)
    assert [(r["name"], r["version"]) for r in refs] == [("model", 3)]


def test_ref_forms_resolve_to_the_same_manifest(tiny_folders, store_dir: Path) -> None:
    registry = Registry(store_dir)
    result = registry.ingest(tiny_folders("gpt2"), "g")
    digest = result.digest
    assert registry.resolve("g") == registry.resolve("g@v1") == registry.resolve("g@1") == digest
    assert registry.resolve(digest) == digest
    assert registry.resolve(digest[:15]) == digest
    with pytest.raises(NotFoundError):
        registry.resolve("g@v2")
    with pytest.raises(NotFoundError):
        registry.resolve("nothing")
    with pytest.raises(InputError):
        registry.resolve("bad name!")
    with pytest.raises(NotFoundError):
        registry.rollback("g", 5)


def test_memory_store_works(tiny_folders, tmp_path: Path) -> None:
    registry = Registry("memory://versions-test")
    result = registry.ingest(tiny_folders("llama"), "mem")
    assert registry.fsck().ok
    out = registry.export("mem", tmp_path / "out")
    assert (
        load_file(out.out_dir / "model.safetensors").keys()
        == load_file(tiny_folders("llama") / "model.safetensors").keys()
    )
    assert registry.log("mem")[0].target == result.digest
