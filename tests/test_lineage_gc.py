"""Lineage renderings and garbage collection."""

from __future__ import annotations

import json
from pathlib import Path

from weightbank.registry import Registry

from helpers import Cli


def _lora(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False)
    )
    model.save_pretrained(out)
    return out


def test_lineage_formats(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    base = tiny_folders("llama")
    wb("ingest", base, "--name", "base", "-m", "the base")
    wb("ingest", _lora(base, tmp_path / "lora", 0), "--name", "lora", "--base", "base")
    registry = Registry(wb.store)
    lora, base_digest = registry.resolve("lora"), registry.resolve("base")

    text = wb("lineage", "lora").stdout.splitlines()
    assert text[0].startswith(lora[:19]) and "[lora@v1]" in text[0]
    assert text[1].startswith("└── base: " + base_digest[:19]) and "[base@v1]" in text[1]

    graph = json.loads(wb("lineage", "lora", "--format", "json").stdout)
    assert graph["root"] == lora
    assert graph["edges"] == [{"child": lora, "parent": base_digest, "role": "base"}]
    assert {n["digest"]: n["type"] for n in graph["nodes"]} == {lora: "adapter", base_digest: "base"}

    dot = wb("lineage", "lora", "--format", "dot").stdout
    assert dot.startswith("digraph lineage {") and f'"{lora}" -> "{base_digest}" [label="base"]' in dot

    prov = json.loads(wb("lineage", "lora", "--format", "prov").stdout)
    lora_id, base_id = "blake3:" + lora[7:], "blake3:" + base_digest[7:]
    assert set(prov["entity"]) == {lora_id, base_id}
    assert len(prov["activity"]) == 2 and all(a["prov:type"] == "wb:ingest" for a in prov["activity"].values())
    derived = list(prov["wasDerivedFrom"].values())
    assert derived[0]["prov:generatedEntity"] == lora_id and derived[0]["prov:usedEntity"] == base_id
    assert any(u["prov:role"] == "wb:base" for u in prov["used"].values())


def test_gc_removes_only_unreachable(tiny_folders, wb: Cli, store_dir: Path, tmp_path: Path) -> None:
    registry = Registry(store_dir)
    base = tiny_folders("llama")
    registry.ingest(base, "base")
    registry.ingest(_lora(base, tmp_path / "lora", 1), "lora", base="base")
    # An orphan: a manifest and objects no ref names (as left by a lost race).
    orphan_store = Registry(tmp_path / "elsewhere")
    orphan_store.ingest(tiny_folders("gpt2"), "x")
    orphan_manifest = orphan_store.resolve("x")
    for path in (tmp_path / "elsewhere").rglob("*"):
        if path.is_file() and "refs" not in path.parts:
            target = store_dir / path.relative_to(tmp_path / "elsewhere")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.write_bytes(path.read_bytes())
    orphan_objects = orphan_store.show("x")["tensors"]
    live = registry.fsck()
    assert live.ok

    young = json.loads(wb("gc", "--json").stdout)
    assert young["objects"] == [] and young["kept_young"] > 0

    dry = json.loads(wb("gc", "--dry-run", "--grace", "0", "--json").stdout)
    assert orphan_manifest in dry["manifests"] and dry["objects"]
    assert registry.store.manifests.has(orphan_manifest)

    done = json.loads(wb("gc", "--grace", "0", "--json").stdout)
    assert done["objects"] == dry["objects"] and done["manifests"] == [orphan_manifest]
    assert not registry.store.manifests.has(orphan_manifest)
    shared = {r["digest"] for r in registry.show("base")["tensors"].values()}
    orphan_only = {r["digest"] for r in orphan_objects.values()} - shared
    assert orphan_only and not any(registry.store.objects.has(d) for d in orphan_only)
    report = registry.fsck()
    assert report.ok and report.manifests == 2
    assert registry.audit("lora").ok
    assert json.loads(wb("gc", "--grace", "0", "--json").stdout)["objects"] == []
