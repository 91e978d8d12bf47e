"""Adapters on tied embeddings follow PEFT, and say so wherever the merge departs from the
adapter as trained: modules_to_save unties, a merged LoRA moves both tied modules (warned,
`untie: true` is exact), ensure_weight_tying shares one delta."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from weightbank.composer import CompositionWarning, compose, plan, verify_composition, write
from weightbank.registry import Registry

from helpers import Cli, make_lora, snapshot

TOKENS = torch.arange(5, 29).reshape(2, 12) % 128
TIED = {"llama": {"tie_word_embeddings": True}, "gpt2": {}}  # GPT-2 is tied by default
EMBED = {"llama": "embed_tokens", "gpt2": "wte"}
QUERY = {"llama": {"target_modules": ["q_proj"]}, "gpt2": {"target_modules": ["c_attn"], "fan_in_fan_out": True}}


def step(bank: str, **options: object) -> dict[str, object]:
    return {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": bank, **options}]}


def tied_store(tiny_folders, tmp_path: Path, family: str, **adapter: object) -> tuple[Registry, Path, Path]:
    base = tiny_folders(family, **TIED[family])
    lora = make_lora(base, tmp_path / "lora", seed=3, r=4, lora_alpha=8, **adapter)
    registry = Registry(tmp_path / "store")
    registry.ingest(base, "base")
    registry.ingest(lora, "lora", base="base")
    return registry, base, lora


def peft(base: Path, lora: Path) -> PeftModel:
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), lora).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def relative_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Max-abs difference relative to the logits' scale (random embedding LoRAs make them large)."""
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def reloaded(registry: Registry, spec: dict[str, object], out: Path) -> torch.nn.Module:
    write(spec, out_dir=out, store=registry.store)
    return AutoModelForCausalLM.from_pretrained(out).eval()


@pytest.mark.parametrize(("family", "module"), [("llama", "embed_tokens"), ("llama", "lm_head"), ("gpt2", "wte")])
def test_modules_to_save_on_a_tied_module_unties_as_peft_does(family, module, tiny_folders, tmp_path: Path) -> None:
    registry, base, lora = tied_store(tiny_folders, tmp_path, family, modules_to_save=[module], **QUERY[family])
    composed, _ = compose(step("lora"), store=registry.store)
    merged = peft(base, lora).merge_and_unload()
    ours, theirs = composed.state_dict(), merged.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    embedding, head = composed.get_input_embeddings().weight, composed.get_output_embeddings().weight
    assert not torch.equal(embedding, head) and composed.config.tie_word_embeddings is False
    assert (logits(composed) - logits(merged)).abs().max().item() <= 1e-5
    assert plan(step("lora"), store=registry.store).warnings == []  # nothing departs from PEFT
    assert torch.equal(logits(reloaded(registry, step("lora"), tmp_path / "out")), logits(composed))


@pytest.mark.parametrize(("family", "module"), [("llama", "embed_tokens"), ("llama", "lm_head"), ("gpt2", "wte")])
def test_lora_on_a_tied_module_warns_and_untie_is_the_unmerged_adapter(
    family, module, tiny_folders, tmp_path: Path
) -> None:
    # A LoRA on a tied lm_head is ingested (the checkpoint has no lm_head.weight: it is the embedding).
    registry, base, lora = tied_store(tiny_folders, tmp_path, family, target_modules=[module])
    with pytest.warns(CompositionWarning, match="untie: true"):
        merged, _ = compose(step("lora"), store=registry.store)
    peer = peft(base, lora)
    unmerged = logits(peer)
    assert (logits(merged) - logits(peer.merge_and_unload())).abs().max().item() <= 1e-5  # PEFT's merge…
    assert relative_diff(logits(merged), unmerged) > 0.05  # …which is not the adapter as trained
    assert merged.config.tie_word_embeddings is True

    untied, _ = compose(step("lora", untie=True), store=registry.store)
    assert relative_diff(logits(untied), unmerged) <= 1e-6
    assert untied.config.tie_word_embeddings is False
    assert plan(step("lora", untie=True), store=registry.store).warnings == []
    assert torch.equal(logits(reloaded(registry, step("lora", untie=True), tmp_path / "out")), logits(untied))


def test_ensure_weight_tying_adds_the_shared_delta_once(tiny_folders, tmp_path: Path) -> None:
    # PEFT saves LoRA factors for both tied modules (the head's are the embedding's transposed).
    registry, base, lora = tied_store(
        tiny_folders, tmp_path, "llama", target_modules=["lm_head"], ensure_weight_tying=True
    )
    the_plan = plan(step("lora"), store=registry.store)
    assert any("ensure_weight_tying" in w and "twice" in w for w in the_plan.warnings)
    assert "lm_head.weight" not in the_plan.targets  # still one tensor
    composed, _ = compose(step("lora"), store=registry.store)
    peer = peft(base, lora)
    assert relative_diff(logits(composed), logits(peer)) <= 1e-6  # the adapter as trained, tied
    assert relative_diff(logits(composed), logits(peer.merge_and_unload())) > 0.05  # PEFT merges it twice
    report = verify_composition(step("lora"), store=registry.store, tolerance=1e-3)  # oracle: PEFT unmerged
    assert report.ok and report.warnings == the_plan.warnings


def test_cli_warns_in_compose_and_verify_and_refuses_untie_without_a_tie(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    base = tiny_folders("gpt2")
    wb("ingest", base, "--name", "g")
    wb("ingest", make_lora(base, tmp_path / "lora", seed=1, r=4, lora_alpha=8, target_modules=["wte"]), "--name",
       "wte-lora", "--base", "g")  # fmt: skip
    spec = tmp_path / "merge.json"
    spec.write_text(json.dumps({**step("wte-lora"), "base": "g"}))
    composed = wb("compose", spec, "--out", tmp_path / "out")
    assert "warning: " in composed.stderr and "untie: true" in composed.stderr
    verified = wb("verify", spec, "--json")
    assert json.loads(verified.stdout)["ok"] and "untie: true" in verified.stderr  # equal to PEFT's merge, warned
    exact = tmp_path / "untie.json"
    exact.write_text(json.dumps({**step("wte-lora", untie=True), "base": "g"}))
    report = wb("verify", exact)
    assert report.stdout.startswith("ok") and "vs from_pretrained(base) + adapter.lora oracle" in report.stdout
    assert "warning" not in report.stderr

    wb("ingest", tiny_folders("llama"), "--name", "untied")
    wb("ingest", make_lora(tiny_folders("llama"), tmp_path / "q", r=2, target_modules=["q_proj"]), "--name", "q",
       "--base", "untied")  # fmt: skip
    before = snapshot(wb.store)
    for options, reason in [({"untie": True}, "not tied"), ({"untie": "yes"}, "untie must be true or false")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**step("q", **options), "base": "untied"}))
        result = wb("compose", bad, "--name", "x", ok=False)
        assert result.exit_code != 0 and result.stderr.startswith("error: ") and reason in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot(wb.store) == before
