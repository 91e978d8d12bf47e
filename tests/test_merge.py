"""merge.* operators and mergekit YAML, against mergekit 0.1.5 itself on the same YAML."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge
from mergekit.merge_methods import generalized_task_arithmetic as mergekit_gta
from mergekit.merge_methods import get as mergekit_method
from mergekit.merge_methods.base import TensorGroup
from mergekit.sparsify import SparsificationMethod, rescaled_masked_tensor
from safetensors.torch import load_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from weightbank.composer.operators.merge_dare import keep_mask
from weightbank.composer.operators.merge_ties import top_magnitude_mask
from weightbank.composer.tiny_models import make_tiny_model

from helpers import Cli, snapshot

FAMILIES = ("llama", "qwen2", "mistral")
TOKENS = torch.tensor([[1, 5, 9, 22, 7, 3, 100, 64]])


def _tokenizer() -> PreTrainedTokenizerFast:
    """A real 128-token word-level tokenizer, so that mergekit's tokenizer_source: base can run."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _save(model: torch.nn.Module, folder: Path, seed: int | None = None) -> Path:
    """`model` saved with the tokenizer; with a seed, after seeded noise on every weight (a
    stand-in for a fine-tune of it)."""
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.02 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Path]]:
    """`family_models(family, **config)` → {base, ft1, ft2, ft3}: a tiny model and three fine-tunes."""
    cache: dict[tuple, dict[str, Path]] = {}

    def make(family: str, **overrides: Any) -> dict[str, Path]:
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"merge-{family}")
            folders = {"base": _save(make_tiny_model(family, 0, **overrides), root / "base")}
            for number in (1, 2, 3):
                folders[f"ft{number}"] = _save(make_tiny_model(family, 0, **overrides), root / f"ft{number}", number)
            cache[key] = folders
        return cache[key]

    return make


def write_yaml(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def mergekit_merge(config: Path, out: Path) -> dict[str, torch.Tensor]:
    """mergekit's own merge of a YAML file, as its tensors (even when it fails after writing them)."""
    document = yaml.safe_load(config.read_text())
    options = MergeOptions(quiet=True, copy_tokenizer=False, lazy_unpickle=False, write_model_card=False)
    try:
        run_merge(MergeConfiguration.model_validate(document), str(out), options)
    except Exception:
        if not (out / "model.safetensors").exists():
            raise
    return load_file(out / "model.safetensors")


def ours(wb: Cli, config: Path, out: Path) -> dict[str, torch.Tensor]:
    wb("compose", config, "--out", out)
    return load_file(out / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: Any = None) -> float:
    names = sorted(keys if keys is not None else a)
    assert names and all(name in b for name in names)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in names)


@contextmanager
def mergekit_with_our_dare_masks(seed: int, positions: dict[str, int]) -> Iterator[None]:
    """mergekit's DARE with its Bernoulli draws replaced by our documented stream (its own comes
    from torch's global generator in its task order and cannot be reproduced elsewhere)."""
    current = threading.local()
    merge_group, sparsify = mergekit_gta.GeneralizedTaskArithmeticMerge.merge_group, mergekit_gta.sparsify

    def patched_group(self: Any, group: Any, /, **parameters: Any) -> Any:
        current.queue = [(group.metadata.name, positions[str(entry.id)]) for entry in group.non_base]
        return merge_group(self, group, **parameters)

    def patched_sparsify(tensor: torch.Tensor, density: float, method: Any, **options: Any) -> torch.Tensor:
        name, position = current.queue.pop(0)
        assert method == SparsificationMethod.random
        mask = keep_mask(seed, name, position, tensor.numel(), density).view_as(tensor).to(tensor)
        return rescaled_masked_tensor(tensor, mask, options["rescale_norm"])

    mergekit_gta.GeneralizedTaskArithmeticMerge.merge_group = patched_group
    mergekit_gta.sparsify = patched_sparsify
    try:
        yield
    finally:
        mergekit_gta.GeneralizedTaskArithmeticMerge.merge_group = merge_group
        mergekit_gta.sparsify = sparsify


def method_configs(m: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """One mergekit YAML per method, written as practitioners write them."""
    base, ft1, ft2, ft3 = (str(m[k]) for k in ("base", "ft1", "ft2", "ft3"))
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": ft1, "parameters": {"weight": 0.7}},
                {"model": ft2, "parameters": {"weight": [0.1, 0.5]}},
            ],
            "dtype": "float32",
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 0.7}},
                {"model": ft2, "parameters": {"weight": -0.3}},
            ],
            "parameters": {"lambda": 0.8},
            "dtype": "float32",
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": base},
                {"model": ft1, "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": ft2, "parameters": {"weight": 0.4, "density": [0.3, 0.9]}},
                {"model": ft3, "parameters": {"weight": 0.5, "density": {"filter": "mlp", "value": 0.2}}},
            ],
            "parameters": {"normalize": True, "int8_mask": True},
            "dtype": "float32",
            "tokenizer_source": "base",
        },
        "ties_rescaled": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": ft1, "parameters": {"weight": 0.6, "density": 0.5}},
                {"model": ft2, "parameters": {"weight": 0.4, "density": 0.3}},
            ],
            "parameters": {"rescale": True, "normalize": False, "lambda": 1.5},
            "dtype": "float32",
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": ft1}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0, 0.5, 1]},
                    {"filter": "mlp", "value": [1, 0.5, 0]},
                    {"value": 0.3},
                ]
            },
            "dtype": "float32",
        },
        "model_stock": {
            "merge_method": "model_stock",
            "base_model": base,
            "models": [{"model": ft1}, {"model": ft2}, {"model": ft3}],
            "parameters": {"filter_wise": True},
            "dtype": "float32",
        },
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_equals_mergekit(family: str, family_models, wb: Cli, tmp_path: Path) -> None:
    """Same YAML to both tools: tensors equal to mergekit's within 1e-6 (fp32), biases included."""
    models = family_models(family)
    for method, document in method_configs(models).items():
        config = write_yaml(tmp_path / f"{method}.yml", document)
        theirs = mergekit_merge(config, tmp_path / f"mergekit-{method}")
        mine = ours(wb, config, tmp_path / f"ours-{method}")
        assert mine.keys() == theirs.keys(), method
        assert max_diff(mine, theirs) <= 1e-6, method


@pytest.mark.parametrize("combine", ["dare_ties", "dare_linear"])
def test_dare_equals_mergekit_given_the_same_masks(combine: str, family_models, wb: Cli, tmp_path: Path) -> None:
    models = family_models("llama")
    entries = [
        {"model": str(models["ft1"]), "parameters": {"weight": 0.6, "density": 0.5}},
        {"model": str(models["ft2"]), "parameters": {"weight": 0.4, "density": [0.2, 0.8]}},
    ]
    document = {"merge_method": combine, "base_model": str(models["base"]), "models": entries, "dtype": "float32"}
    config = write_yaml(tmp_path / "dare.yml", document)
    with mergekit_with_our_dare_masks(0, {e["model"]: i for i, e in enumerate(entries)}):
        theirs = mergekit_merge(config, tmp_path / "mergekit")
    mine = ours(wb, config, tmp_path / "ours")
    assert max_diff(mine, theirs) <= 1e-6


def test_dare_keeps_density_and_the_l1_norm(family_models, wb: Cli, tmp_path: Path) -> None:
    """Statistically, against the formula: each entry kept with probability density, and the kept
    entries rescaled so that the task vector keeps its L1 norm; a seed makes it reproducible."""
    models = family_models("llama", vocab_size=4096)
    wb("ingest", models["base"], "--name", "base")
    wb("ingest", models["ft1"], "--name", "ft1")
    base, tuned = load_file(models["base"] / "model.safetensors"), load_file(models["ft1"] / "model.safetensors")

    def dare(seed: int, out: str) -> dict[str, torch.Tensor]:
        models = [{"bank": "ft1", "weight": 1.0, "density": 0.3}]
        step = {"op": "merge.dare", "combine": "linear", "seed": seed, "models": models}
        spec = write_yaml(tmp_path / f"dare-{seed}.yaml", {"mes_version": "1", "base": "base", "steps": [step]})
        return ours(wb, spec, tmp_path / out)

    first, again, other = dare(7, "first"), dare(7, "again"), dare(8, "other")
    name = "model.embed_tokens.weight"  # 262 144 entries
    delta, merged = tuned[name] - base[name], first[name] - base[name]
    kept = merged != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.005
    factor = delta.abs().sum() / delta[kept].abs().sum()
    assert abs(factor.item() - 1 / 0.3) < 0.05
    assert torch.allclose(merged[kept], delta[kept] * factor, rtol=1e-5, atol=1e-7)
    assert torch.allclose(merged.abs().sum(), delta.abs().sum(), rtol=1e-5)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first[name], other[name])


def test_bfloat16_is_the_float32_merge_rounded_once(family_models, wb: Cli, tmp_path: Path) -> None:
    """Our bf16 result is our fp32 result rounded once, and so mergekit's fp32 result rounded once.
    (mergekit with dtype: bfloat16 rounds the inputs and computes in bf16; see docs/merging.md.)"""
    document = method_configs(family_models("qwen2"))["ties"]
    fp32 = ours(wb, write_yaml(tmp_path / "fp32.yml", document), tmp_path / "fp32")
    bf16 = ours(wb, write_yaml(tmp_path / "bf16.yml", {**document, "dtype": "bfloat16"}), tmp_path / "bf16")
    theirs = mergekit_merge(tmp_path / "fp32.yml", tmp_path / "mergekit")
    assert all(bf16[k].dtype == torch.bfloat16 and torch.equal(bf16[k], fp32[k].to(torch.bfloat16)) for k in fp32)
    assert all(torch.equal(bf16[k], theirs[k].to(torch.bfloat16)) for k in fp32)


@pytest.mark.parametrize("family", FAMILIES)
def test_passthrough_stacks_slices_into_a_deeper_model(family: str, family_models, wb: Cli, tmp_path: Path) -> None:
    models = family_models(family)
    document = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": str(models["ft1"]), "layer_range": [0, 2]}]},
            {"sources": [{"model": str(models["ft2"]), "layer_range": [1, 2], "parameters": {"scale": 0.5}}]},
        ],
        "dtype": "float32",
    }
    config = write_yaml(tmp_path / "frankenmerge.yml", document)
    mine = ours(wb, config, tmp_path / "ours")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32)
    assert model.config.num_hidden_layers == 3 and len(model.model.layers) == 3
    one, two = load_file(models["ft1"] / "model.safetensors"), load_file(models["ft2"] / "model.safetensors")
    layer = "self_attn.q_proj.weight"
    assert torch.equal(mine[f"model.layers.1.{layer}"], one[f"model.layers.1.{layer}"])
    assert torch.equal(mine[f"model.layers.2.{layer}"], two[f"model.layers.1.{layer}"] * 0.5)
    assert torch.equal(mine["model.embed_tokens.weight"], one["model.embed_tokens.weight"])
    assert torch.equal(mine["lm_head.weight"], two["lm_head.weight"] * 0.5)
    # mergekit writes the same tensors (on Qwen2 under transformers 5 it then fails on layer_types)
    assert max_diff(mine, mergekit_merge(config, tmp_path / "mergekit")) == 0


def test_slerp_gradients_over_layers_and_filters(family_models, wb: Cli, tmp_path: Path) -> None:
    """The Hub's classic slerp YAML (slices form) on a 5-layer model: every layer gets its own t,
    interpolated from the lists, with separate self_attn / mlp values."""
    models = family_models("mistral", num_hidden_layers=5)
    base, other = str(models["base"]), str(models["ft1"])
    document = {
        "slices": [{"sources": [{"model": base, "layer_range": [0, 5]}, {"model": other, "layer_range": [0, 5]}]}],
        "merge_method": "slerp",
        "base_model": base,
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                {"value": 0.5},
            ]
        },
        "dtype": "float32",
    }
    config = write_yaml(tmp_path / "slerp.yml", document)
    mine = ours(wb, config, tmp_path / "ours")
    assert max_diff(mine, mergekit_merge(config, tmp_path / "mergekit")) <= 1e-6
    a, b = load_file(models["base"] / "model.safetensors"), load_file(models["ft1"] / "model.safetensors")
    first, last = "model.layers.0.self_attn.o_proj.weight", "model.layers.4.mlp.up_proj.weight"
    assert torch.equal(mine[first], a[first]) and torch.equal(mine[last], a[last])  # t = 0 at both
    middle = "model.layers.2.self_attn.o_proj.weight"
    assert not torch.equal(mine[middle], a[middle]) and not torch.equal(mine[middle], b[middle])


def test_llama_biases_are_merged_not_dropped(family_models, wb: Cli, tmp_path: Path) -> None:
    """mergekit's Llama template has no attention/MLP biases, so it drops them; we merge them
    (checked with mergekit's own ties function on the bias tensors) and the result loads."""
    models = family_models("llama", attention_bias=True, mlp_bias=True)
    config = write_yaml(tmp_path / "ties.yml", method_configs(models)["ties_rescaled"])
    mine = ours(wb, config, tmp_path / "ours")
    theirs = mergekit_merge(config, tmp_path / "mergekit")
    biases = sorted(k for k in mine if k.endswith(".bias"))
    assert len(biases) == 14 and not any(k.endswith(".bias") for k in theirs)
    assert max_diff(mine, theirs, theirs.keys()) <= 1e-6
    inputs = [load_file(models[k] / "model.safetensors") for k in ("base", "ft1", "ft2")]
    ties = mergekit_method("ties")
    for name in biases:
        group = TensorGroup.from_tensors([t[name] for t in inputs], base_index=0, name=name)
        parameters = {"weight": [0.6, 0.4], "density": [0.5, 0.3], "rescale": True, "normalize": False, "lambda": 1.5}
        (expected,) = ties([group], parameters=parameters)
        assert (mine[name] - expected).abs().max().item() <= 1e-6, name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)[1]
    assert not loaded["missing_keys"] and not loaded["unexpected_keys"]


def test_store_refs_folders_lineage_and_import(family_models, wb: Cli, tmp_path: Path) -> None:
    """Models given as store refs and as folders; folders ingested once, under their names; the
    registered result's lineage names every input and the method with its parameters; the
    imported composition composes to the same tensors."""
    models = family_models("llama")
    wb("ingest", models["base"], "--name", "llama-base")
    document = method_configs(models)["ties"]
    document["base_model"] = document["models"][0]["model"] = "llama-base"
    config = write_yaml(tmp_path / "merge.yml", document)
    result = wb("compose", config, "--out", tmp_path / "out", "--name", "merged")
    assert "ingested" in result.stderr and "as ft1@v1" in result.stderr
    refs = {entry["name"]: entry for entry in json.loads(wb("refs", "--json").stdout)}
    assert sorted(refs) == ["ft1", "ft2", "ft3", "llama-base", "merged"]

    lineage = json.loads(wb("lineage", "merged", "--format", "json").stdout)
    roles = {edge["parent"]: edge["role"] for edge in lineage["edges"] if edge["child"] == refs["merged"]["target"]}
    assert roles[refs["llama-base"]["target"]] == "base"
    assert all(roles[refs[name]["target"]] == "merge-input" for name in ("ft1", "ft2", "ft3"))
    (root,) = [n for n in lineage["nodes"] if n["digest"] == refs["merged"]["target"]]
    (step,) = root["activity"]["parameters"]["steps"]
    assert step["op"] == "merge.ties" and step["normalize"] is True
    assert [m.get("density") for m in step["models"]] == [None, 0.5, [0.3, 0.9], {"filter": "mlp", "value": 0.2}]

    before = snapshot(wb.store)
    wb("import-mergekit", config, "-o", tmp_path / "spec.yaml")
    assert snapshot(wb.store) == before  # unchanged folders: same versions, nothing new
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    assert spec["base"] == "llama-base" and [m["bank"] for m in spec["steps"][0]["models"]][1:] == [
        "ft1@v1", "ft2@v1", "ft3@v1"
    ]  # fmt: skip
    again = ours(wb, tmp_path / "spec.yaml", tmp_path / "again")
    assert max_diff(again, load_file(tmp_path / "out" / "model.safetensors")) == 0


def test_verify_compares_with_mergekit(family_models, wb: Cli, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "slerp.yml", method_configs(family_models("qwen2"))["slerp"])
    report = json.loads(wb("verify", config, "--json").stdout)
    assert report["ok"] and report["max_abs_diff"] <= 1e-5 and "merge.slerp" in report["oracle"]


def test_dry_run_checks_folders_and_writes_nothing(family_models, wb: Cli, tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "ta.yml", method_configs(family_models("mistral"))["task_arithmetic"])
    result = wb("compose", config, "--dry-run", "--json")
    assert json.loads(result.stdout)["steps"] == ["merge.task_arithmetic"]
    assert "would ingest" in result.stderr and not wb.store.exists()


def refused(wb: Cli, *args: Any) -> str:
    """Run a command that must fail cleanly: one `error:` line, nothing written."""
    before = snapshot(wb.store)
    result = wb(*args, ok=False)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and snapshot(wb.store) == before
    return lines[0]


def test_refusals_name_the_problem_and_leave_the_store(family_models, tiny_folders, wb: Cli, tmp_path: Path) -> None:
    models = family_models("llama")
    good = {k: v for k, v in method_configs(models)["ties"].items() if k != "tokenizer_source"}
    wb("ingest", models["base"], "--name", "llama-base")

    def config(**changes: Any) -> Path:
        return write_yaml(tmp_path / "bad.yml", {**good, **changes})

    assert "merge_method: 'della' is not supported" in refused(
        wb, "compose", config(merge_method="della"), "--out", tmp_path / "o"
    )
    qwen = [{"model": str(family_models("qwen2")["ft1"]), "parameters": {"weight": 1.0}}]
    line = refused(wb, "compose", config(models=good["models"][:2] + qwen), "--out", tmp_path / "o")
    assert "is a qwen2 model, the base is a llama model" in line
    wide = [{"model": str(tiny_folders("llama", intermediate_size=256)), "parameters": {"weight": 1.0}}]
    line = refused(wb, "compose", config(models=good["models"][:2] + wide), "--out", tmp_path / "o")
    assert "mlp.up_proj.weight is [256, 64]" in line
    assert "modules: per-module configs" in refused(wb, "compose", config(modules={}), "--out", tmp_path / "o")
    typo = [{"model": str(models["ft1"]), "parameters": {"weight": 1.0, "desnity": 0.5}}]
    line = refused(wb, "compose", config(models=typo), "--out", tmp_path / "o")
    assert "unknown key(s) desnity" in line
    shared = [{"model": str(models["ft1"]), "parameters": {"weight": 1.0, "normalize": False}}]
    assert "normalize is shared" in refused(wb, "compose", config(models=shared), "--out", tmp_path / "o")
    missing = [{"model": "meta-llama/Llama-3.2-1B", "parameters": {"weight": 1.0}}]
    line = refused(wb, "compose", config(models=missing), "--out", tmp_path / "o")
    assert "model meta-llama/Llama-3.2-1B: not a local folder and not in the store" in line
    assert "weight is required for" in refused(
        wb, "compose", config(models=[{"model": str(models["ft1"])}]), "--out", tmp_path / "o"
    )
    three = [{"model": str(models[k])} for k in ("base", "ft1", "ft2")]
    assert "merge.slerp takes at most 2 models" in refused(
        wb, "import-mergekit", config(merge_method="slerp", parameters={"t": 0.5}, models=three)
    )
    assert "tokenizer_source: 'union' is not supported" in refused(
        wb, "compose", config(tokenizer_source="union"), "--dry-run"
    )
    assert "dtype: 'float64' is not supported" in refused(wb, "compose", config(dtype="float64"), "--dry-run")
    assert not (tmp_path / "o").exists()


def test_a_different_tokenizer_is_refused_under_tokenizer_source_base(
    family_models, copy_folder, wb: Cli, tmp_path: Path
) -> None:
    models = family_models("llama")
    other = copy_folder(models["ft1"])
    (other / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    document = {**method_configs(models)["ties_rescaled"], "tokenizer_source": "base"}
    document["models"][0]["model"] = str(other)
    line = refused(wb, "compose", write_yaml(tmp_path / "t.yml", document), "--out", tmp_path / "o")
    assert "tokenizer differs from the base's (tokenizer.json)" in line


def test_require_signed_refuses_model_folders_before_ingesting(family_models, keys, wb: Cli, tmp_path: Path) -> None:
    wb("ingest", family_models("llama")["base"], "--name", "llama-base")
    wb("trust", "add", "alice", keys["alice"][1])
    config = write_yaml(tmp_path / "ta.yml", method_configs(family_models("llama"))["task_arithmetic"])
    line = refused(wb, "compose", config, "--out", tmp_path / "o", "--require-signed")
    assert "a folder is not a signed bank" in line and not (tmp_path / "o").exists()


def test_top_magnitude_mask_keeps_ties_in_index_order() -> None:
    """The reusable trim rule: k = max(1, ⌊density·n⌋) largest |values|, ties at the cut by position."""
    values = torch.tensor([0.5, -2.0, 1.0, -1.0, 1.0, 0.0, 3.0, -1.0])
    assert top_magnitude_mask(values, 0.5).tolist() == [False, True, True, True, False, False, True, False]
    assert top_magnitude_mask(values, 0.01).tolist() == [False] * 6 + [True, False]  # at least one
    assert top_magnitude_mask(values, 1.0).all() and not top_magnitude_mask(values, 0.0).any()
    # bf16-like data, full of equal magnitudes: the same choice as a stable sort by |value|, descending
    matrix = torch.randn(512, 300).bfloat16().float() - torch.randn(512, 300).bfloat16().float()
    for density in (0.25, 0.5, 0.9):
        kept = top_magnitude_mask(matrix, density)
        k = int(density * matrix.numel())
        expected = torch.zeros(matrix.numel(), dtype=torch.bool)
        expected[torch.sort(-matrix.abs().reshape(-1), stable=True).indices[:k]] = True
        assert kept.shape == matrix.shape and torch.equal(kept.reshape(-1), expected)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_merge_composed_onto_cuda_equals_the_cpu_merge(family_models, wb: Cli, tmp_path: Path) -> None:
    from weightbank.composer import compose

    document = method_configs(family_models("llama"))["ties"]
    dare = {**document, "merge_method": "dare_ties"}
    for name, doc in (("ties", document), ("dare", dare)):
        config = write_yaml(tmp_path / f"{name}.yml", doc)
        on_gpu, _ = compose(str(config), device="cuda", store=wb.store)
        on_cpu, _ = compose(str(config), device="cpu", store=wb.store)
        gpu, cpu = on_gpu.state_dict(), on_cpu.state_dict()
        assert max((gpu[k].cpu() - cpu[k]).abs().max().item() for k in cpu) <= 1e-5, name


def test_the_readme_example_is_accepted_as_it_is() -> None:
    from weightbank.composer.mergekit_config import parse, to_composition

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("# merge.yml", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    composition = to_composition(parse(yaml.safe_load(block), "README"), lambda model: Path(model).name, "README")
    (step,) = composition["steps"]
    assert composition["base"] == "Mistral-7B-v0.1" and composition["dtype"] == "bfloat16"
    assert step["op"] == "merge.slerp" and [s["layers"] for s in step["slices"][0]["sources"]] == [[0, 32]] * 2
    assert step["t"][0] == {"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}
