"""adapter.lora merges exactly as PEFT's merge_and_unload, on real models and real adapters.

One adapter's merge is bit-identical to PEFT's whatever its scale (one fused pass where the scale
is a power of two — r=4, lora_alpha=8 here —, PEFT's arithmetic where it is not: rsLoRA patterns,
weights); several adapters in one step are one fused product, and `exact_peft=True` makes them
PEFT's merge of each in turn, bit for bit (composer/low_rank.py, test_low_rank.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from weightbank.composer import compose
from weightbank.registry import Registry

from helpers import make_lora

TOKENS = torch.arange(5, 29).reshape(2, 12) % 128
LINEAR = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
EMBEDDING = {"llama": "embed_tokens", "qwen2": "embed_tokens", "mistral": "embed_tokens", "gpt2": "wte"}
SAVED_MODULE = {"llama": "lm_head", "qwen2": "lm_head", "mistral": "lm_head", "gpt2": "ln_f"}
BIASED = {"qwen2": ["q_proj", "k_proj", "v_proj"], "gpt2": ["c_attn"]}


def lora_config(family: str, case: str) -> dict[str, object]:
    linear = LINEAR[family]
    fan_in_fan_out = {"fan_in_fan_out": True} if family == "gpt2" else {}
    base = {"r": 4, "lora_alpha": 8, "target_modules": linear, **fan_in_fan_out}
    if case == "plain":
        return base
    if case == "rslora-patterns":
        first, second = linear[0], linear[-1]
        return {**base, "use_rslora": True, "rank_pattern": {first: 2, second: 6}, "alpha_pattern": {second: 3}}
    if case == "dora":
        return {**base, "use_dora": True}
    if case == "embedding-and-saved-module":
        return {**base, "target_modules": [*linear, EMBEDDING[family]], "modules_to_save": [SAVED_MODULE[family]]}
    if case == "lora-bias":
        return {**base, "target_modules": BIASED[family], "lora_bias": True}
    raise KeyError(case)


CASES = [
    (family, case)
    for family in LINEAR
    for case in ("plain", "rslora-patterns", "dora", "embedding-and-saved-module", "lora-bias")
    if case != "lora-bias" or family in BIASED
]


def assert_same_model(composed: torch.nn.Module, expected: torch.nn.Module, tolerance: float = 0.0) -> None:
    """Same tensors (bit-identical unless `tolerance` says otherwise) and the same logits."""
    ours, theirs = composed.state_dict(), expected.state_dict()
    assert ours.keys() == theirs.keys()
    worst = max((ours[k].float() - theirs[k].float()).abs().max().item() for k in theirs)
    assert worst <= tolerance, worst
    with torch.no_grad():
        logits = (composed(TOKENS).logits - expected(TOKENS).logits).abs().max().item()
    assert logits <= 1e-5, logits


@pytest.mark.parametrize(("family", "case"), CASES)
def test_merge_matches_peft(family: str, case: str, tiny_folders, tmp_path: Path) -> None:
    base_folder = tiny_folders(family)
    adapter = make_lora(base_folder, tmp_path / "adapter", seed=7, **lora_config(family, case))
    registry = Registry(tmp_path / "store")
    registry.ingest(base_folder, "base")
    registry.ingest(adapter, "lora", base="base")

    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lora"}]}
    composed, _ = compose(spec, store=registry.store)
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter).merge_and_unload()
    assert_same_model(composed, expected.eval())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_two_weighted_adapters_are_the_sum_of_weighted_deltas(family: str, tiny_folders, tmp_path: Path) -> None:
    base_folder = tiny_folders(family)
    config = lora_config(family, "plain")
    first = make_lora(base_folder, tmp_path / "a", seed=1, **config)
    second = make_lora(base_folder, tmp_path / "b", seed=2, **{**config, "r": 2, "lora_alpha": 5})
    registry = Registry(tmp_path / "store")
    registry.ingest(base_folder, "base")
    registry.ingest(first, "a", base="base")
    registry.ingest(second, "b", base="base")
    spec = {
        "mes_version": "1",
        "base": "base",
        "steps": [{"op": "adapter.lora", "adapters": [{"bank": "a", "weight": 0.7}, {"bank": "b", "weight": -0.4}]}],
    }
    composed, _ = compose(spec, store=registry.store)

    # PEFT's cat combination (positive weights: PEFT scales A by the weight). It multiplies the
    # concatenated factors, so the two products are summed inside one GEMM: a different order of
    # float32 additions than the sum of the two deltas, hence a tolerance of a few ulps.
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), first, adapter_name="a")
    peft_model.load_adapter(second, adapter_name="b")
    peft_model.add_weighted_adapter(["a", "b"], [0.7, -0.4], "ab", combination_type="cat")
    peft_model.set_adapter("ab")
    assert_same_model(composed, peft_model.merge_and_unload(adapter_names=["ab"]).eval(), tolerance=1e-6)

    # Two steps, one adapter each, give the same model as one weighted step, up to the order
    # of float32 additions: (W + Δa) + Δb against W + (Δa + Δb).
    stepwise = {
        "mes_version": "1",
        "base": "base",
        "steps": [
            {"op": "adapter.lora", "bank": "a", "weight": 0.7},
            {"op": "adapter.lora", "bank": "b", "weight": -0.4},
        ],
    }
    assert_same_model(compose(stepwise, store=registry.store)[0], composed, tolerance=1e-6)

    # exact_peft: PEFT's own merge of both adapters, each at its weight (set_scale), bit for bit.
    exact, _ = compose(spec, store=registry.store, exact_peft=True)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), first, adapter_name="a")
    peft_model.load_adapter(second, adapter_name="b")
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("a", 0.7)
            module.set_scale("b", -0.4)
    assert_same_model(exact, peft_model.merge_and_unload(adapter_names=["a", "b"]).eval())


def test_weighted_rslora_matches_peft_scaled_merge(tiny_folders, tmp_path: Path) -> None:
    base_folder = tiny_folders("qwen2")
    adapter = make_lora(base_folder, tmp_path / "a", seed=3, **lora_config("qwen2", "rslora-patterns"))
    registry = Registry(tmp_path / "store")
    registry.ingest(base_folder, "base")
    registry.ingest(adapter, "a", base="base")
    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "a", "weight": 0.25}]}
    composed, _ = compose(spec, store=registry.store)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", 0.25)
    assert_same_model(composed, peft_model.merge_and_unload().eval())


def test_half_precision_merge_rounds_once(tiny_folders, tmp_path: Path) -> None:
    """In bfloat16 the merge is computed in float32 and rounded once: the float32 PEFT merge,
    cast to bfloat16, bit for bit (PEFT merging in bfloat16 rounds ΔW first, then the sum)."""
    base_folder = tiny_folders("llama")
    adapter = make_lora(base_folder, tmp_path / "adapter", seed=5, **lora_config("llama", "plain"))
    registry = Registry(tmp_path / "store")
    registry.ingest(base_folder, "base")
    registry.ingest(adapter, "lora", base="base")
    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lora"}]}
    composed, _ = compose(spec, store=registry.store, dtype="bfloat16")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter).merge_and_unload()
    ours, theirs = composed.state_dict(), merged.to(torch.bfloat16).state_dict()
    assert all(ours[name].dtype == torch.bfloat16 and torch.equal(ours[name], theirs[name]) for name in theirs)
