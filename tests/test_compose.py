"""Composing through the CLI: folders from_pretrained loads, banks with provenance, bf16,
refused plans that leave everything untouched, and bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from weightbank.composer import compose
from weightbank.registry import Registry

from helpers import Cli, make_lora, snapshot

TOKENS = torch.arange(7, 31).reshape(2, 12) % 128


@pytest.fixture
def lora_store(tiny_folders, wb: Cli, tmp_path: Path) -> Cli:
    base = tiny_folders("llama")
    wb("ingest", base, "--name", "base")
    adapter = make_lora(base, tmp_path / "lora", seed=5, r=4, lora_alpha=16, target_modules=["q_proj", "down_proj"])
    wb("ingest", adapter, "--name", "lora", "--base", "base")
    return wb


def write_spec(path: Path, steps: list[dict], base: str = "base", **extra: object) -> Path:
    document = {"mes_version": "1", "base": base, "steps": steps, **extra}
    path.write_text(yaml.safe_dump(document) if path.suffix == ".yaml" else json.dumps(document))
    return path


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits.float()


def test_out_folder_loads_with_from_pretrained(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "bank": "lora", "weight": 0.5}])
    out = tmp_path / "out"
    lora_store("compose", spec, "--out", out, "--max-shard-size", "100KB")
    assert (out / "model.safetensors.index.json").exists() and (out / "generation_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    in_memory, _ = compose(str(spec), store=lora_store.store)
    assert torch.equal(logits(reloaded), logits(in_memory))
    assert not torch.equal(logits(reloaded), logits(compose("base", store=lora_store.store)[0]))


def test_exact_peft_flag_gives_the_api_s_exact_merge(lora_store: Cli, tiny_folders, tmp_path: Path) -> None:
    base = tiny_folders("llama")
    second = make_lora(base, tmp_path / "second", seed=6, r=4, lora_alpha=12, target_modules=["q_proj"])
    lora_store("ingest", second, "--name", "second", "--base", "base")
    adapters = [{"bank": "lora", "weight": 0.7}, {"bank": "second", "weight": -0.3}]
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "adapters": adapters}])
    out = tmp_path / "exact"
    lora_store("compose", spec, "--out", out, "--exact-peft")
    reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    exact = compose(str(spec), store=lora_store.store, exact_peft=True)[0].state_dict()
    fused = compose(str(spec), store=lora_store.store)[0].state_dict()
    assert reloaded.keys() == exact.keys()
    assert all(torch.equal(reloaded[key], exact[key]) for key in exact)
    assert all(torch.allclose(fused[key], exact[key], rtol=0, atol=1e-6) for key in exact)


def test_bfloat16_composition(lora_store: Cli, tiny_folders, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.json", [{"op": "adapter.lora", "bank": "lora"}], dtype="bfloat16")
    model, _ = compose(str(spec), store=lora_store.store)
    assert model.dtype == torch.bfloat16 and model.config.dtype == torch.bfloat16
    out = tmp_path / "bf16"
    lora_store("compose", spec, "--out", out)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    assert torch.equal(logits(reloaded), logits(model))
    # The base alone in bf16 equals transformers' own bf16 load of the original folder.
    base_bf16, _ = compose("base", dtype="bfloat16", store=lora_store.store)
    peer = AutoModelForCausalLM.from_pretrained(tiny_folders("llama"), dtype=torch.bfloat16)
    assert torch.equal(logits(base_bf16), logits(peer))


def test_name_registers_a_bank_with_provenance(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "bank": "lora"}])
    result = json.loads(lora_store("compose", spec, "--name", "merged", "-m", "merged lora", "--json").stdout)
    assert result["version"] == 1 and result["new_objects"] > 0
    registry = Registry(lora_store.store)
    bank = registry.show("merged")
    parents = {p["role"]: p["digest"] for p in bank["provenance"]["parents"]}
    assert parents["base"] == registry.resolve("base") and parents["adapter"] == registry.resolve("lora")
    composition = registry.show(parents["composition"])
    assert composition["kind"] == "composition"
    assert composition["base"] == registry.resolve("base")
    assert composition["steps"][0]["bank"] == registry.resolve("lora")
    assert bank["provenance"]["activity"]["operator"] == "compose"
    assert registry.log("merged")[0].action == "compose"
    # Unchanged tensors are shared with the base, not stored again.
    base_digests = {r["digest"] for r in registry.show("base")["tensors"].values()}
    unchanged = [n for n, r in bank["tensors"].items() if r["digest"] in base_digests]
    assert "model.embed_tokens.weight" in unchanged and "model.layers.0.self_attn.q_proj.weight" not in unchanged
    lineage = lora_store("lineage", "merged").stdout
    assert "composition:" in lineage and "adapter:" in lineage
    assert registry.fsck().ok
    exported = registry.export("merged", tmp_path / "exported").out_dir
    composed, _ = compose(str(spec), store=registry.store)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(exported)), logits(composed))


def test_dry_run_reports_the_plan_and_reads_nothing(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "bank": "lora"}])
    before = snapshot(lora_store.store)
    summary = json.loads(lora_store("compose", spec, "--dry-run", "--json").stdout)
    assert summary["tensors"] == 21 and summary["steps"] == ["adapter.lora"]
    assert summary["target_config"]["hidden_size"] == 64
    assert summary["bytes_produced"] == 90432 * 4
    assert summary["bytes_read"] > summary["bytes_produced"]  # the base plus the adapter factors
    assert summary["peak_memory_estimate"] > 0
    assert snapshot(lora_store.store) == before


def test_bad_plan_lists_every_problem_and_writes_nothing(lora_store: Cli, tiny_folders, tmp_path: Path) -> None:
    lora_store("ingest", tiny_folders("llama", hidden_size=32, intermediate_size=64), "--name", "narrow")
    other = make_lora(tiny_folders("llama", seed=4), tmp_path / "other-lora", r=2, target_modules=["v_proj"])
    lora_store("ingest", tiny_folders("llama", seed=4), "--name", "other-base")
    lora_store("ingest", other, "--name", "other-lora", "--base", "other-base")
    spec = write_spec(
        tmp_path / "bad.yaml",
        [
            {"op": "adapter.lora", "bank": "lora", "check_base": False},  # shapes do not fit the narrow base
            {"op": "expand.sideways", "size": 3},  # unknown operator
            {"op": "adapter.lora", "bank": "ghost@v1"},  # missing bank
            {"op": "adapter.lora", "bank": "other-lora"},  # trained on another base
        ],
        base="narrow",
    )
    before = snapshot(lora_store.store)
    out = tmp_path / "out"
    result = lora_store("compose", spec, "--out", out, "--name", "never", ok=False)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: composition refused (")
    assert "ΔW is [64, 64] but model.layers.0.self_attn.q_proj.weight is [32, 32]" in line
    assert "unknown operator 'expand.sideways'" in line
    assert "no ref named 'ghost'" in line
    assert "was trained on base" in line and "check_base: false" in line
    assert not out.exists()
    assert snapshot(lora_store.store) == before


def test_missing_base_still_reports_the_steps(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.json", [{"op": "nope"}, {"op": "adapter.lora", "bank": "gone"}], base="nobase")
    line = lora_store("compose", spec, "--dry-run", ok=False).stderr
    assert "base: no ref named 'nobase'" in line and "unknown operator 'nope'" in line and "no ref named 'gone'" in line


def test_schema_invalid_spec_is_refused(lora_store: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"mes_version": "1", "base": "base", "steps": [{"bank": "lora"}]}))
    result = lora_store("compose", spec, "--dry-run", ok=False)
    assert "not a valid MES v1 composition" in result.stderr and "'op' is a required property" in result.stderr


def test_verify_reports_and_fails_over_tolerance(lora_store: Cli, tiny_folders, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "bank": "lora", "weight": 0.3}])
    good = lora_store("verify", spec, "--json")
    report = json.loads(good.stdout)
    assert report["ok"] and report["max_abs_diff"] <= 1e-5 and "adapter.lora" in report["oracle"]
    lora_store("ingest", tiny_folders("llama", seed=9), "--name", "stranger")
    bad = lora_store("verify", spec, "--against", "stranger", ok=False)
    assert bad.exit_code == 1 and bad.stdout.startswith("FAIL: max-abs difference")
    assert bad.stderr.startswith("error: ") and "differs from stranger by" in bad.stderr  # the bank it was asked


def test_compose_without_an_action_is_refused(lora_store: Cli) -> None:
    assert "nothing to do" in lora_store("compose", "base", ok=False).stderr


PEAK_SCRIPT = """
import json, os, resource, subprocess, sys
proc = subprocess.Popen([sys.executable, "-m", "weightbank", "--quiet", "--store", sys.argv[1], "compose", sys.argv[2],
                         "--out", sys.argv[3]])
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"status": os.waitstatus_to_exitcode(status), "peak_rss": usage.ru_maxrss * 1024}))
"""


@pytest.mark.slow
def test_streaming_compose_memory_stays_near_one_tensor(tmp_path: Path) -> None:
    """An ~810 MB model composed store → --out in a child process: its peak RSS stays under
    three largest tensors plus a fixed overhead (the interpreter with torch and transformers
    imported is ~400 MB)."""
    from safetensors.torch import save_file

    from weightbank.composer.tiny_models import make_config

    config = make_config("llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                         num_attention_heads=8, num_key_value_heads=4, vocab_size=8192)  # fmt: skip
    config.architectures = ["LlamaForCausalLM"]
    folder = tmp_path / "model"
    folder.mkdir()
    config.save_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    shapes = _llama_shapes(config)
    tensors = {name: torch.randn(shape, generator=generator) * 0.02 for name, shape in shapes.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    total = sum(t.numel() * 4 for t in tensors.values())
    largest = max(t.numel() * 4 for t in tensors.values())
    del tensors
    registry = Registry(tmp_path / "store")
    registry.ingest(folder, "big")
    adapter = tmp_path / "adapter"
    _write_lora(adapter, shapes, ["q_proj", "down_proj"])
    registry.ingest(adapter, "big-lora", base="big")
    spec = write_spec(tmp_path / "spec.json", [{"op": "adapter.lora", "bank": "big-lora"}], base="big")

    overhead = 500 * 2**20
    budget = 3 * largest + overhead
    assert total > budget, "the model must be bigger than the memory budget"
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "store"), str(spec), str(tmp_path / "out")],
        capture_output=True, text=True, check=True, env={**os.environ},
    )  # fmt: skip
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["status"] == 0, run.stderr
    assert measured["peak_rss"] < budget, (measured["peak_rss"] / 2**20, budget / 2**20, total / 2**20)
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > total


def _llama_shapes(config: object) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _write_lora(folder: Path, shapes: dict[str, tuple[int, ...]], modules: list[str], rank: int = 8) -> None:
    """A PEFT-format adapter written directly (making a PeftModel of a 600 MB model would
    dominate the test's run time)."""
    from safetensors.torch import save_file

    folder.mkdir()
    tensors = {}
    for name, shape in shapes.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight") and module.rsplit(".", 1)[-1] in modules:
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, shape[1]) * 0.01
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(shape[0], rank) * 0.01
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 16, "target_modules": modules, "fan_in_fan_out": False}
    (folder / "adapter_config.json").write_text(json.dumps(config))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_compose_on_cuda_in_bfloat16_matches_cpu(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "bank": "lora"}])
    on_gpu, _ = compose(str(spec), device="cuda", dtype="bfloat16", store=lora_store.store)
    on_cpu, _ = compose(str(spec), device="cpu", dtype="bfloat16", store=lora_store.store)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.bfloat16
    gpu_state, cpu_state = on_gpu.state_dict(), on_cpu.state_dict()
    assert max((gpu_state[k].cpu().float() - cpu_state[k].float()).abs().max().item() for k in cpu_state) <= 1e-2
    with torch.no_grad():
        gpu_logits = on_gpu(TOKENS.cuda()).logits.float().cpu()
    assert (gpu_logits - logits(on_cpu)).abs().max().item() < 0.1


@pytest.mark.gpu
@cuda
def test_compose_with_device_map_auto(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.yaml", [{"op": "adapter.lora", "bank": "lora"}])
    model, _ = compose(str(spec), device="auto", store=lora_store.store)
    devices = {p.device.type for p in model.parameters()}
    assert "cuda" in devices
    reference, _ = compose(str(spec), device="cpu", store=lora_store.store)
    with torch.no_grad():
        auto_logits = model(TOKENS.to(model.device)).logits.float().cpu()
    assert (auto_logits - logits(reference)).abs().max().item() < 1e-3


def test_a_weight_float32_cannot_hold_is_refused(lora_store: Cli, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.json", [{"op": "adapter.lora", "bank": "lora", "weight": 1e39}])
    line = lora_store("compose", spec, "--dry-run", ok=False).stderr
    assert line.count("\n") == 1 and "weight of lora is 1e+39, beyond what float32 arithmetic can hold" in line
