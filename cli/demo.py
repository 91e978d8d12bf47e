"""`weightbank demo`: the main job end to end on a tiny Llama made on the spot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .output import human_bytes


def _step(text: str) -> None:
    click.secho(f"\n== {text}", bold=True)


def run_demo(registry: Any, work: Path) -> None:
    """Make, ingest, change, roll back, export, adapt, compose, verify and trace a tiny Llama."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForCausalLM

    from weightbank.composer import compose, expand, verify_composition, write
    from weightbank.composer.tiny_models import make_tiny_model
    from weightbank.registry import provenance

    transformers.utils.logging.disable_progress_bar()
    work.mkdir(parents=True, exist_ok=True)
    click.echo(f"store: {registry.store.url}\nwork folder: {work}")

    _step("make a tiny Llama (GQA) with random weights and save it")
    original = make_tiny_model("llama", seed=0)
    source = work / "llama-tiny"
    original.save_pretrained(source)
    click.echo(f"saved {source}")

    _step("ingest it as demo-llama")
    first = registry.ingest(source, "demo-llama", message="tiny llama, random init")
    click.echo(f"demo-llama@v{first.version} {first.digest} ({first.new_objects} new objects)")

    _step("change one tensor and ingest again: one new object")
    weights = load_file(source / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 1.5
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    second = registry.ingest(source, "demo-llama", message="rescaled final norm")
    click.echo(f"demo-llama@v{second.version} ({second.new_objects} new object, {human_bytes(second.new_bytes)})")

    _step("log demo-llama")
    for entry in registry.log("demo-llama"):
        click.echo(f"v{entry.version}  {entry.target[:19]}  {entry.time}  {entry.action}  {entry.message}")

    _step("roll back to v1 (history grows, nothing is rewritten)")
    entry = registry.rollback("demo-llama", 1).entry
    click.echo(f"{entry.label} -> {entry.target} (same as v1: {entry.target == first.digest})")

    _step("export demo-llama and load it with transformers")
    exported = registry.export("demo-llama", work / "exported")
    model = AutoModelForCausalLM.from_pretrained(exported.out_dir)
    tokens = torch.arange(16).unsqueeze(0)
    with torch.no_grad():
        diff = (model(tokens).logits - original(tokens).logits).abs().max().item()
    click.echo(f"loaded {type(model).__name__} from {exported.out_dir}; logits max-abs diff vs the original: {diff}")

    _step("make a LoRA adapter with PEFT (random factors) and ingest it against demo-llama")
    torch.manual_seed(1)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(exported.out_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    lora.save_pretrained(str(work / "lora"))
    adapter = registry.ingest(work / "lora", "demo-lora", base="demo-llama")
    click.echo(f"demo-lora@v{adapter.version}: {adapter.tensors} tensors, {human_bytes(adapter.total_bytes)}")

    _step("compose demo-llama + 0.5 × demo-lora, tensor by tensor")
    spec = {
        "mes_version": "1",
        "base": "demo-llama",
        "steps": [{"op": "adapter.lora", "bank": "demo-lora", "weight": 0.5}],
    }
    composed, _ = compose(spec, store=registry.store)
    result = write(spec, out_dir=work / "composed", name="demo-merged", store=registry.store)
    click.echo(
        f"in memory: {type(composed).__name__}; on disk: {result.out_dir}; registered demo-merged@v{result.version}"
    )
    report = verify_composition(spec, store=registry.store)
    verdict = "ok" if report.ok else "FAIL"
    click.echo(f"verify against PEFT's merge_and_unload: max-abs logits diff {report.max_abs_diff:.3g} ({verdict})")

    _step("graft a seed onto demo-llama (Kasmina-style, alpha on a cosine ramp), attach it, then fold it")
    torch.manual_seed(2)
    slot = "model.layers.0.self_attn.q_proj"
    ramp = {"alpha0": 0.0, "alpha1": 1.0, "shape": "cosine", "steps": 1000, "at": 400}
    seeded = registry.add_scaffold(
        "demo-seed", host="demo-llama", seeds={slot: torch.nn.Linear(64, 64, bias=False)}, kind="delta", alpha=ramp
    )
    checked = registry.check_scaffold("demo-seed").seeds[0]
    click.echo(f"demo-seed@v{seeded.version}: a delta seed on {slot}, alpha {checked.alpha_text}")
    steps = {op: {"mes_version": "1", "base": "demo-llama", "steps": [{"op": op, "bank": "demo-seed"}]}
             for op in ("scaffold.attach", "scaffold.fold")}  # fmt: skip
    attached, _ = compose(steps["scaffold.attach"], store=registry.store)
    folded, _ = compose(steps["scaffold.fold"], store=registry.store)
    with torch.no_grad():
        seed_diff = (attached(tokens).logits - folded(tokens).logits).abs().max().item()
        moved = (attached(tokens).logits - model(tokens).logits).abs().max().item()
    click.echo(f"attached: a {type(attached.get_submodule(slot)).__name__} computes W·x + α·ΔW·x at run time")
    click.echo(f"folded into the weights, W' = W + α·ΔW: logits max-abs diff vs attached {seed_diff:.3g}")
    click.echo(f"(the seed itself moved the logits by {moved:.3g})")
    checked_fold = verify_composition(steps["scaffold.fold"], store=registry.store)
    verdict = "ok" if checked_fold.ok else "FAIL"
    click.echo(f"verify the fold against the attached seed: {checked_fold.max_abs_diff:.3g} ({verdict})")

    _step("grow demo-llama: 2 → 4 layers, FFN 128 → 256, hidden 64 → 96, stored as a recipe")
    growth = [
        {"op": "expand.depth", "layers": 4},
        {"op": "expand.ffn", "size": 256},
        {"op": "expand.hidden", "size": 96},
    ]
    grown = expand(registry.store, "demo-llama", "demo-grown", growth, message="grow for continued pretraining")
    click.echo(
        f"demo-grown@v{grown.version}: {grown.parameters:,} parameters (from {original.num_parameters():,}), "
        f"bank manifest {grown.manifest_bytes:,} bytes, no tensors stored"
    )
    exact = verify_composition("demo-grown", store=registry.store)
    click.echo(
        f"verify grown vs original: max-abs logits diff {exact.max_abs_diff:.3g} ({'ok' if exact.ok else 'FAIL'})"
    )
    grown_model, _ = compose("demo-grown", store=registry.store)
    click.echo(f"composed {type(grown_model).__name__} with {grown_model.num_parameters():,} parameters, lazily")

    _step("lineage and audit of the composed bank")
    click.echo(provenance.render_text(registry.lineage("demo-merged")))
    audit = registry.audit("demo-merged")
    click.echo(f"audit: {'ok' if audit.ok else 'FAILED'} ({audit.objects} objects verified)")
