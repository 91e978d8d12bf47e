"""Corruption is caught by reads, fsck and audit, each naming the damaged object."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from weightbank.registry import IntegrityError, NotFoundError, Registry
from weightbank.registry.objects import object_path

from helpers import Cli


def flip_byte(path: Path, offset: int = -1) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_everywhere(tiny_folders, wb: Cli, store_dir: Path, tmp_path: Path) -> None:
    registry = Registry(store_dir)
    registry.ingest(tiny_folders("llama"), "model")
    registry.ingest(tiny_folders("gpt2"), "other")
    record = registry.show("model")["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    digest = record["digest"]
    flip_byte(store_dir / object_path(digest))

    with pytest.raises(IntegrityError, match=digest):
        registry.store.objects.read(digest)
    with pytest.raises(IntegrityError, match=digest):
        registry.export("model", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    fsck = wb("fsck", ok=False)
    assert fsck.exit_code == 1 and digest in fsck.stdout
    report = json.loads(wb("fsck", "--json", ok=False).stdout)
    assert not report["ok"] and any(digest in p["subject"] for p in report["problems"])

    audit = wb("audit", "model", ok=False)
    assert audit.exit_code == 1
    assert "model.layers.0.self_attn.q_proj.weight" in audit.stdout and digest in audit.stdout
    assert "model@v1" in audit.stdout
    assert wb("audit", "other").exit_code == 0


def test_missing_parent_and_object_are_reported(tiny_folders, wb: Cli, store_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_folders("llama")
    adapter = tmp_path / "lora"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"])
    ).save_pretrained(adapter)
    wb("ingest", base, "--name", "base")
    wb("ingest", adapter, "--name", "lora", "--base", "base")
    registry = Registry(store_dir)
    base_digest = registry.resolve("base")
    (store_dir / "manifests" / base_digest[7:9] / base_digest[7:]).unlink()

    audit = json.loads(wb("audit", "lora", "--json", ok=False).stdout)
    assert [p["detail"] for p in audit["problems"]] == ["missing parent (parent)"]
    assert base_digest in audit["problems"][0]["subject"]
    lineage = wb("lineage", "lora").stdout
    assert "missing" in lineage

    lora_object = next(iter(registry.show("lora")["tensors"].values()))["digest"]
    (store_dir / object_path(lora_object)).unlink()
    with pytest.raises(NotFoundError, match=lora_object):
        registry.store.objects.read(lora_object)
    assert any(lora_object in p for p in wb("audit", "lora", ok=False).stdout.splitlines())
