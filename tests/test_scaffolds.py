"""Scaffold banks: every seed kind folded exactly (vs the attached, unfolded seeds and vs PEFT),
alpha schedules, refusals, and fuse / prune / persist through the CLI and the Python API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from weightbank.composer import compose, plan, verify_composition
from weightbank.composer.seed_modules import SeededLayer
from weightbank.registry import Registry, SeedSpec
from weightbank.registry.scaffolds import alpha_at

from helpers import Cli, make_lora, snapshot

TOKENS = torch.arange(3, 27).reshape(2, 12)
SCHEDULE = {"alpha0": 0.1, "alpha1": 0.9, "shape": "cosine", "steps": 100, "at": 30}
# One slot per foldable kind; Qwen2's q/k/v carry biases, GPT-2's Conv1D layers store (in, out).
SLOTS = {
    "llama": {
        "delta": "model.layers.0.self_attn.q_proj", "blend": "model.layers.0.self_attn.k_proj",
        "lora": "model.layers.0.mlp.up_proj", "input": "model.layers.1.self_attn.o_proj",
        "output": "model.layers.1.mlp.down_proj", "router": "model.layers.1.mlp.gate_proj",
    },
    "qwen2": {
        "delta": "model.layers.0.self_attn.q_proj", "input": "model.layers.0.self_attn.k_proj",
        "output": "model.layers.0.self_attn.v_proj", "router": "model.layers.1.self_attn.q_proj",
        "blend": "model.layers.1.self_attn.k_proj", "lora": "model.layers.1.mlp.down_proj",
    },
    "gpt2": {
        "delta": "transformer.h.0.attn.c_attn", "blend": "transformer.h.0.mlp.c_fc",
        "lora": "transformer.h.0.attn.c_proj", "input": "transformer.h.1.attn.c_attn",
        "output": "transformer.h.1.mlp.c_proj", "router": "transformer.h.1.mlp.c_fc",
    },
}  # fmt: skip


def seed_tensors(kind: str, features: tuple[int, int], bias: bool, seed: int) -> dict[str, torch.Tensor]:
    """Random seed tensors (nn.Linear layout) for a layer with (in, out) features."""
    generator = torch.Generator().manual_seed(seed)
    in_features, out_features = features

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    if kind in ("delta", "blend", "input", "output"):
        rows, cols = {"input": (in_features, in_features), "output": (out_features, out_features)}.get(
            kind, (out_features, in_features)
        )
        return {"weight": rand(rows, cols), **({"bias": rand(rows)} if bias else {})}
    if kind == "lora":
        return {"lora_A.weight": rand(4, in_features), "lora_B.weight": rand(out_features, 4)}
    if kind == "router":
        experts = {f"experts.{k}.weight": rand(out_features, in_features) for k in range(3)}
        biases = {f"experts.{k}.bias": rand(out_features) for k in range(3)} if bias else {}
        return {**experts, **biases, "gates": torch.tensor([0.5, 0.3, 0.2])}
    return {"up.weight": rand(16, in_features), "down.weight": rand(out_features, 16)}  # mlp


def features_of(registry: Registry, family: str, slot: str) -> tuple[int, int]:
    rows, cols = registry.store.bank("host").tensors[f"{slot}.weight"].shape
    return (rows, cols) if family == "gpt2" else (cols, rows)


def spec(op: str, bank: str, **step: object) -> dict[str, object]:
    return {"mes_version": "1", "base": "host", "steps": [{"op": op, "bank": bank, **step}]}


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits.float()


@pytest.fixture(scope="module")
def hosts(tiny_folders, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Registry]:
    """A store per family with its tiny model ingested as `host`."""
    stores = {}
    for family in SLOTS:
        registry = Registry(tmp_path_factory.mktemp(f"scaffold-{family}") / "store")
        registry.ingest(tiny_folders(family), "host")
        stores[family] = registry
    return stores


@pytest.mark.parametrize("family", list(SLOTS))
def test_every_kind_folds_as_its_attached_seed_computes(family: str, hosts: dict[str, Registry]) -> None:
    registry = hosts[family]
    host = registry.store.bank("host")
    seeds = {}
    for number, (kind, slot) in enumerate(SLOTS[family].items()):
        tensors = seed_tensors(kind, features_of(registry, family, slot), f"{slot}.bias" in host.tensors, number)
        options = {"lora_alpha": 8} if kind == "lora" else {}
        value: object = tensors
        if family == "gpt2" and kind == "delta":  # a live Conv1D seed module: stored in nn.Linear's layout
            value = Conv1D(tensors["weight"].shape[0], tensors["weight"].shape[1])
            value.load_state_dict({"weight": tensors["weight"].t(), "bias": tensors["bias"]})
        seeds[slot] = SeedSpec(value, kind=kind, alpha=SCHEDULE if number % 2 else 0.7, options=options)
    made = registry.add_scaffold("every-kind", host="host", seeds=seeds)
    assert made.seeds == 6 and made.host == host.digest

    attached, _ = compose(spec("scaffold.attach", "every-kind"), store=registry.store)
    seeded = sorted(name for name, module in attached.named_modules() if isinstance(module, SeededLayer))
    assert seeded == sorted(SLOTS[family].values())
    stored = registry.store.bank("every-kind").tensors
    state = attached.state_dict()
    assert set(stored) <= set(state)  # the bank's names are the attached modules' parameters
    delta = SLOTS[family]["delta"]
    assert stored[f"{delta}.delta.weight"].shape == tuple(reversed(features_of(registry, family, delta)))
    folded, _ = compose(spec("scaffold.fold", "every-kind"), store=registry.store)
    plain, _ = compose({"mes_version": "1", "base": "host", "steps": []}, store=registry.store)
    assert (logits(attached) - logits(plain)).abs().max() > 1e-2  # the seeds matter
    assert (logits(folded) - logits(attached)).abs().max() <= 1e-5
    for slot in SLOTS[family].values():
        assert not torch.equal(folded.state_dict()[f"{slot}.weight"], plain.state_dict()[f"{slot}.weight"])

    half, _ = compose(spec("scaffold.fold", "every-kind"), dtype="bfloat16", store=registry.store)
    for name, tensor in half.state_dict().items():
        assert torch.equal(tensor, folded.state_dict()[name].to(tensor.dtype)), name  # fp32 fold rounded once

    report = verify_composition(spec("scaffold.fold", "every-kind"), store=registry.store)
    assert report.ok and "scaffold.fold oracle" in report.oracle and report.others == []


def test_alpha_schedules_give_the_documented_alpha(hosts: dict[str, Registry], tmp_path: Path) -> None:
    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    for t in (0, 25, 50, 80, 100, 130):
        u = min(t / 100, 1.0)
        expected = {
            "linear": u,
            "cosine": (1 - math.cos(math.pi * u)) / 2,
            "sigmoid": (sigmoid(6 * (2 * u - 1)) - sigmoid(-6)) / (sigmoid(6) - sigmoid(-6)),
        }
        for shape, phi in expected.items():
            schedule = {"alpha0": 0.2, "alpha1": -0.6, "shape": shape, "steps": 100, "at": t}
            assert alpha_at(schedule) == pytest.approx(0.2 - 0.8 * phi, abs=1e-12)
    steep = {"alpha0": 0.0, "alpha1": 1.0, "shape": "sigmoid", "steps": 10, "at": 3, "steepness": 2.0}
    assert alpha_at(steep) == pytest.approx((sigmoid(-4.8) - sigmoid(-12)) / (sigmoid(12) - sigmoid(-12)))

    # Through the CLI: a schedule given as options, evaluated at the stored step or the step's `at`;
    # a composition step's alpha wins over the bank's.
    registry = hosts["llama"]
    slot = SLOTS["llama"]["delta"]
    delta = {f"{slot}.delta.weight": torch.ones(64, 64)}
    folder = write_scaffold_folder(tmp_path / "delta", {slot: {"kind": "delta"}}, delta)
    wb = Cli(registry.store.backend.root)
    wb("scaffold", "add", folder, "--host", "host", "--name", "ramped", "--alpha0", "0", "--alpha1", "1",
       "--shape", "linear", "--steps", "200", "--at", "50")  # fmt: skip
    checked = json.loads(wb("scaffold", "check", "ramped", "--json").stdout)
    assert checked["seeds"][0]["alpha"] == 0.25 and checked["foldable"]
    wb("scaffold", "add", folder, "--host", "host", "--name", "constant", "--alpha", "0.75")
    host_weight = compose({"mes_version": "1", "base": "host", "steps": []}, store=registry.store)[0].state_dict()
    weights = {
        label: compose(spec("scaffold.fold", bank, **step), store=registry.store)[0].state_dict()[f"{slot}.weight"]
        for label, bank, step in [("stored", "ramped", {}), ("at", "ramped", {"at": 150}), ("alpha", "ramped",
                                  {"alpha": 0.75}), ("constant", "constant", {})]
    }  # fmt: skip
    original = host_weight[f"{slot}.weight"]
    assert torch.allclose(weights["stored"], original + 0.25, atol=1e-6)
    assert torch.allclose(weights["at"], original + 0.75, atol=1e-6)
    assert torch.equal(weights["alpha"], weights["constant"])


def write_scaffold_folder(folder: Path, seeds: dict[str, dict[str, object]], tensors: dict[str, torch.Tensor],
                          **top: object) -> Path:  # fmt: skip
    """A scaffold folder as docs/scaffolds.md describes it: scaffold.json + seeds.safetensors."""
    folder.mkdir(parents=True)
    (folder / "scaffold.json").write_text(json.dumps({**top, "seeds": seeds}))
    save_file(tensors, folder / "seeds.safetensors")
    return folder


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_lora_folder_as_a_scaffold_folds_as_peft_merges_at_alpha_times_scale(
    family: str, tiny_folders, tmp_path: Path
) -> None:
    base_folder = tiny_folders(family)
    if family == "gpt2":
        config = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True}
    else:
        config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"], "use_rslora": True,
                  "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"down_proj": 3}}  # fmt: skip
    adapter = make_lora(base_folder, tmp_path / "adapter", seed=3, **config)
    wb = Cli(tmp_path / "store")
    wb("ingest", base_folder, "--name", "host")
    added = wb("scaffold", "add", adapter, "--host", "host", "--name", "grown", "--alpha", "0.4")
    assert "added grown@v1" in added.stdout

    registry = Registry(tmp_path / "store")
    wb("ingest", adapter, "--name", "as-adapter", "--base", "host")
    as_adapter = plan(
        {"mes_version": "1", "base": "host", "steps": [{"op": "adapter.lora", "bank": "as-adapter", "weight": 0.4}]},
        store=registry.store,
    )
    assert plan(spec("scaffold.fold", "grown"), store=registry.store).targets == as_adapter.targets  # task for task
    folded, _ = compose(spec("scaffold.fold", "grown"), store=registry.store)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), adapter)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", 0.4)
    expected = peft_model.merge_and_unload().eval()
    ours, theirs = folded.state_dict(), expected.state_dict()
    assert max((ours[k] - theirs[k]).abs().max().item() for k in theirs) <= 1e-6
    assert (logits(folded) - logits(expected)).abs().max() <= 1e-5

    spec_file = tmp_path / "fold.json"
    spec_file.write_text(json.dumps(spec("scaffold.fold", "grown")))
    verified = wb("verify", spec_file).stdout.splitlines()
    assert verified[0].startswith("ok:") and "scaffold.fold oracle" in verified[0]
    assert verified[1].startswith("ok:") and "PEFT merge_and_unload at scale α·s" in verified[1]


def assert_refused(wb: Cli, store: Path, *args: object, expect: str) -> str:
    """One `error: ` line on stderr, no traceback, a non-zero exit and the store unchanged."""
    before = snapshot(store)
    result = wb(*args, ok=False)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert expect in lines[0], lines[0]
    assert snapshot(store) == before
    return lines[0]


def test_refusals_are_one_clear_line_and_leave_the_store_unchanged(tiny_folders, tmp_path: Path) -> None:
    store = tmp_path / "store"
    wb = Cli(store)
    wb("ingest", tiny_folders("llama"), "--name", "host")
    q = "model.layers.0.self_attn.q_proj"

    def add(slot: str, shape: tuple[int, ...], *options: str, expect: str, **descriptor: object) -> None:
        tensors = {f"{slot}.delta.weight": torch.ones(shape)}
        folder = write_scaffold_folder(tmp_path / f"seeds-{len(list(tmp_path.iterdir()))}",
                                       {slot: {"kind": "delta", **descriptor}}, tensors)  # fmt: skip
        assert_refused(wb, store, "scaffold", "add", folder, "--host", "host", "--name", "s", *options, expect=expect)

    add("model.layers.7.self_attn.q_proj", (64, 64), expect="host host has no module model.layers.7.self_attn.q_proj")
    add(q, (64, 32), expect=f"seed {q}: delta.weight is [64, 32], expected [out=64×in=64]")
    add("model.layers.0", (64, 64), expect="model.layers.0 is a block whose output is the residual stream")
    add("model.norm", (64, 64), expect="model.norm is a norm (a 1-D weight) on the residual stream")
    add(q, (64, 64), kind="sideways", expect="kind must be one of")
    add(q, (64, 64), "--alpha", "1", "--shape", "linear", expect="either --alpha or a schedule")

    registry = Registry(store)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 8), torch.nn.GELU(), torch.nn.Linear(8, 64))
    registry.add_scaffold("mlp-seed", host="host", seeds={q: mlp}, kind="mlp")
    mlp_spec = tmp_path / "mlp.json"
    mlp_spec.write_text(json.dumps(spec("scaffold.fold", "mlp-seed")))
    line = assert_refused(wb, store, "compose", mlp_spec, "--out", tmp_path / "out", expect="cannot fold")
    assert "op: scaffold.attach" in line and not (tmp_path / "out").exists()
    line = assert_refused(wb, store, "scaffold", "fuse", "mlp-seed", expect="mlp-seed cannot be fused: seed")
    assert "is not linear in its input" in line and "weightbank scaffold persist mlp-seed" in line
    attach_spec = tmp_path / "attach.json"
    attach_spec.write_text(json.dumps(spec("scaffold.attach", "mlp-seed")))
    assert_refused(wb, store, "compose", attach_spec, "--out", tmp_path / "out", expect="runtime modules")
    assert (compose(attach_spec, store=store)[0].get_submodule(q)).kind == "mlp"  # attaching is fine

    embed = {"model.embed_tokens": {"weight": torch.ones(128, 64)}}
    registry.add_scaffold("embedding-seed", host="host", seeds=embed)
    embed_spec = tmp_path / "embed.json"
    embed_spec.write_text(json.dumps(spec("scaffold.fold", "embedding-seed")))
    not_linear = "model.embed_tokens is an Embedding layer, not a linear layer"
    assert_refused(wb, store, "compose", embed_spec, "--dry-run", expect=not_linear)

    gated = {"experts.0.weight": torch.ones(64, 64), "gate.weight": torch.ones(1, 64)}
    registry.add_scaffold("gated", host="host", seeds={q: gated}, kind="router")
    checked = registry.check_scaffold("gated").seeds[0]
    assert not checked.foldable and "gates depend on the input" in checked.reason
    gated_spec = tmp_path / "gated.json"
    gated_spec.write_text(json.dumps(spec("scaffold.fold", "gated")))
    assert_refused(wb, store, "compose", gated_spec, "--dry-run", expect="gates depend on the input")

    wb("scaffold", "prune", "mlp-seed")
    assert_refused(wb, store, "scaffold", "persist", "mlp-seed", expect="mlp-seed was already pruned (mlp-seed@v2)")
    assert_refused(wb, store, "compose", attach_spec, "--dry-run", expect="mlp-seed was pruned")


def test_fuse_prune_persist_are_recorded_in_log_and_lineage(tiny_folders, tmp_path: Path) -> None:
    store = tmp_path / "store"
    wb = Cli(store)
    wb("ingest", tiny_folders("qwen2"), "--name", "host")
    q, up = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"
    folder = write_scaffold_folder(
        tmp_path / "seeds",
        {q: {"kind": "delta"}, up: {"kind": "lora", "lora_alpha": 16, "alpha": SCHEDULE}},
        {f"{q}.delta.weight": torch.randn(64, 64) * 0.1, f"{q}.delta.bias": torch.randn(64) * 0.1,
         f"{up}.lora_A.weight": torch.randn(8, 64) * 0.1, f"{up}.lora_B.weight": torch.randn(128, 8) * 0.1},
        kind="delta", alpha=0.5, metadata={"trainer": "kasmina"},
    )  # fmt: skip
    wb("scaffold", "add", folder, "--host", "host", "--name", "seed-7", "-m", "germinated at step 30")
    assert "unchanged seed-7@v1" in wb("scaffold", "add", folder, "--host", "host", "--name", "seed-7").stdout
    check = json.loads(wb("scaffold", "check", "seed-7", "--json").stdout)
    assert [(s["slot"], s["kind"], s["foldable"]) for s in check["seeds"]] == [(q, "delta", True), (up, "lora", True)]
    assert check["seeds"][1]["alpha"] == pytest.approx(alpha_at(SCHEDULE))

    registry = Registry(store)
    folded = compose(spec("scaffold.fold", "seed-7"), store=registry.store)[0]
    objects_before = set((store / "objects").rglob("*"))
    fused = wb("scaffold", "fuse", "seed-7", "-m", "fused after evaluation").stdout
    assert "fused seed-7 into host@v2" in fused and "3 of" in fused  # q weight and bias, up weight
    new_objects = {p.name for p in set((store / "objects").rglob("*")) - objects_before if p.is_file()}
    host_v1, host_v2 = registry.store.bank("host@v1"), registry.store.bank("host@v2")
    changed = {n for n in host_v2.tensors if host_v2.tensors[n].digest != host_v1.tensors[n].digest}
    assert changed == {f"{q}.weight", f"{q}.bias", f"{up}.weight"}
    config_object = host_v2.files["config.json"].digest.split(":")[1]
    assert new_objects - {config_object} == {host_v2.tensors[n].digest.split(":")[1] for n in changed}
    fused_model = compose({"mes_version": "1", "base": "host", "steps": []}, store=registry.store)[0]
    assert torch.equal(logits(fused_model), logits(folded))  # the fused host is the fold

    host_log = json.loads(wb("log", "host", "--reverse", "--json").stdout)
    assert (host_log[-1]["action"], host_log[-1]["message"]) == ("fuse", "fused after evaluation")
    seed_log = json.loads(wb("log", "seed-7", "--reverse", "--json").stdout)
    assert [(e["action"], e["message"]) for e in seed_log] == [("add", "germinated at step 30"),
                                                              ("fuse", "fused after evaluation")]  # fmt: skip
    lineage = json.loads(wb("lineage", "host@v2", "--format", "json").stdout)
    seed_v1 = registry.resolve("seed-7@v1")
    assert {"child": lineage["root"], "parent": seed_v1, "role": "scaffold"} in lineage["edges"]
    assert any(node["names"] == ["seed-7@v1"] for node in lineage["nodes"])
    decision = registry.show("seed-7")["fold"]["decision"]
    assert decision == {"action": "fuse", "result": registry.resolve("host@v2"), "result_ref": "host@v2"}
    line = assert_refused(wb, store, "scaffold", "fuse", "seed-7", expect="already fused")
    assert "rollback" in line

    # The original host moved on (v2): a scaffold made on host@v1 is refused on host@v2 unless told.
    wb("scaffold", "add", folder, "--host", "host@v1", "--name", "seed-8")
    assert_refused(wb, store, "scaffold", "fuse", "seed-8", expect="host has moved on")
    moved_on = tmp_path / "moved-on.json"
    moved_on.write_text(json.dumps(spec("scaffold.fold", "seed-8")))
    assert_refused(wb, store, "compose", moved_on, "--dry-run", expect="was grafted onto host host@v1")
    wb("scaffold", "add", folder, "--host", "host@v1", "--name", "seed-10")
    assert "into branch@v1" in wb("scaffold", "fuse", "seed-10", "--as", "branch").stdout
    branch = json.loads(wb("lineage", "branch", "--format", "json").stdout)
    assert {"child": branch["root"], "parent": registry.resolve("seed-10@v1"), "role": "scaffold"} in branch["edges"]
    wb("scaffold", "prune", "seed-8", "-m", "no gain on the eval set")
    wb("scaffold", "add", folder, "--host", "host@v1", "--name", "seed-9")
    assert "persist: persisted" in wb("scaffold", "persist", "seed-9").stdout
    for name, action, message in [("seed-8", "prune", "no gain on the eval set"),
                                  ("seed-9", "persist", "persisted: the seeds stay separate modules at run time "
                                   "(scaffold.attach)")]:  # fmt: skip
        entries = json.loads(wb("log", name, "--reverse", "--json").stdout)
        assert [e["action"] for e in entries] == ["add", action] and entries[-1]["message"] == message
        graph = json.loads(wb("lineage", name, "--format", "json").stdout)
        root = next(node for node in graph["nodes"] if node["digest"] == graph["root"])
        assert root["activity"]["operator"] == f"scaffold.{action}" and root["names"] == [f"{name}@v2"]
        assert {"child": graph["root"], "parent": registry.resolve(f"{name}@v1"), "role": "source"} in graph["edges"]
    assert "seed-8: 2 seeds on host host@v1; pruned" in wb("scaffold", "check", "seed-8").stdout  # still readable
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**spec("scaffold.fold", "seed-8@v1"), "base": "host@v1"}))
    assert "scaffold.fold" in wb("compose", earlier, "--dry-run").stdout  # the version before the decision
    persisted = compose({**spec("scaffold.attach", "seed-9"), "base": "host@v1"}, store=registry.store)[0]
    assert isinstance(persisted.get_submodule(up), SeededLayer)
