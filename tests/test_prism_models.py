"""PRISM bridges between two real (tiny, random-weight) models, end to end through the CLI:
a Llama (hidden 64) → a Qwen2 (hidden 96) sharing a tokenizer, fitted from text, evaluated,
run as a bridged pipeline; a Qwen2 with another tokenizer needs `--pool line`.

The tiny models ship no tokenizer, so a real byte-level BPE is trained here on the test text
and saved as a `Qwen2Tokenizer` (transformers 5 loads every qwen2 checkpoint's tokenizer as
that class, so the shared tokenizer must be one for both models to agree)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from test_prism import assert_refused
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, Qwen2Tokenizer

import weightbank
from weightbank.composer.prism.taps import Tap, run_to_tap

from helpers import Cli, snapshot

VOCAB = 320
FIT = ["prism", "fit", "--source", "tl", "--target", "tq", "--name"]
WORDS = (
    "the a cat dog sat ran on under mat log red blue big small quick slow fox jumps over lazy "
    "bird sings tree house river flows stone moon sun light dark night day walks talks eats sleeps green old new"
)


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS.split()) for _ in range(rng.randint(6, 14))) for _ in range(count)]


def save_bpe_tokenizer(folder: Path, lines: list[str], vocab_size: int) -> None:
    """Train a byte-level BPE on `lines` and save it in `folder` as a Qwen2Tokenizer."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(lines, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]]).save_pretrained(folder)


@pytest.fixture(scope="module")
def pair_world(tmp_path_factory: pytest.TempPathFactory, tiny_folders) -> dict[str, Path]:
    """Model folders with tokenizers and the train / eval texts."""
    root = tmp_path_factory.mktemp("prism-models")
    lines = sentences(100, seed=0)
    (root / "train.txt").write_text("\n".join(lines[:80]) + "\n")
    (root / "eval.txt").write_text("\n".join(lines[80:]) + "\n")
    folders = {
        "llama": tiny_folders("llama", vocab_size=VOCAB),
        "qwen": tiny_folders("qwen2", hidden_size=96, vocab_size=VOCAB),
        "qwen-other": tiny_folders("qwen2", hidden_size=96, vocab_size=VOCAB),
    }
    world = {"train": root / "train.txt", "eval": root / "eval.txt"}
    for name, source in folders.items():
        world[name] = shutil.copytree(source, root / name)
        save_bpe_tokenizer(world[name], lines, VOCAB if name != "qwen-other" else 290)
    return world


def test_llama_to_qwen2_bridge_from_text_end_to_end(pair_world: dict[str, Path], wb: Cli) -> None:
    for name, folder in (("tl", "llama"), ("tq", "qwen"), ("tq-other", "qwen-other")):
        wb("ingest", pair_world[folder], "--name", name)
    fitted = json.loads(
        wb(
            *FIT, "lq", "--text", pair_world["train"], "--source-tap", "layer.0", "--target-tap", "layer.0", "--json"
        ).output
    )
    report = fitted["grid"]["fit"]
    assert fitted["version"] == 1 and report["pairing"] == "tokens" and report["rows"]["train"] > 500
    assert fitted["grid"]["source"]["composition"]["base"].startswith("blake3:")
    assert report["dense_lstsq"]["r2"] - report["train"]["r2"] < 1e-6 and report["heldout"]["r2"] > 0
    lineage = json.loads(wb("lineage", "lq", "--format", "json").output)
    roles = {edge["role"] for edge in lineage["edges"]}
    assert roles == {"source", "target"}, lineage

    evaluated = json.loads(wb("prism", "eval", "lq", "--text", pair_world["eval"], "--json").output)
    assert evaluated["pairing"] == "tokens" and evaluated["pairs"] > 100
    assert all(isinstance(evaluated["loss"][key], float) for key in ("bridged", "source", "target"))
    text = wb("prism", "eval", "lq", "--text", pair_world["eval"]).output
    assert "loss A→bridge→B" in text and "on the fit's held-out rows" in text

    # The bridged pipeline: A up to its tap, the bridge, B from its tap — B's logits, equal to
    # B run with its layer-0 output replaced by the bridged state (a hook of another kind).
    store = wb.store
    model = weightbank.compose_bridged("tl", "lq", "tq", store=store)
    bridge = weightbank.load_bridge("lq", store=store)
    ids = torch.tensor(model.tokenizer(["the cat sat on the mat", "a fox jumps over the dog"], padding=True).input_ids)
    mask = torch.ones_like(ids)
    skipped_layer = model.target.model.layers[0]
    calls: list[int] = []
    skipped_layer.register_forward_hook(lambda *_: calls.append(1))
    logits = model(ids, mask).logits
    assert logits.shape == (2, ids.shape[1], VOCAB)
    # B's layers up to its tap are not run, and are back in place afterwards.
    assert calls == [] and model.target.model.layers[0] is skipped_layer
    llama = AutoModelForCausalLM.from_pretrained(pair_world["llama"]).eval()
    qwen = AutoModelForCausalLM.from_pretrained(pair_world["qwen"]).eval()
    with torch.no_grad():
        bridged = bridge(llama(ids, output_hidden_states=True).hidden_states[1])
        handle = qwen.model.layers[0].register_forward_hook(lambda _m, _a, _o: bridged)
        expected = qwen(ids).logits
        handle.remove()
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    assert not torch.allclose(logits, qwen(ids).logits, atol=1e-3)


def test_default_taps_bridge_final_state_into_input_embeddings(
    pair_world: dict[str, Path], wb: Cli, tmp_path: Path
) -> None:
    for name, folder in (("tl", "llama"), ("tq", "qwen")):
        wb("ingest", pair_world[folder], "--name", name)
    # Model A is a composition (tl grown by an identity block): its own lineage is recorded.
    grown = tmp_path / "grown.yaml"
    grown.write_text('mes_version: "1"\nbase: tl\nsteps:\n  - op: expand.depth\n    layers: 3\n')
    fit = ["prism", "fit", "--name", "fe", "--source", grown, "--target", "tq", "--text", pair_world["train"]]
    wb(*fit, "--tiles", "6")
    parents = {p["role"] for p in json.loads(wb("show", "fe", "--json").output)["manifest"]["provenance"]["parents"]}
    assert parents == {"source", "source-base", "target"}
    model = weightbank.compose_bridged(str(grown), "fe", "tq", store=wb.store)
    ids = torch.tensor([model.tokenizer("the red fox sleeps under the old tree").input_ids])
    llama = AutoModelForCausalLM.from_pretrained(pair_world["llama"]).eval()
    qwen = AutoModelForCausalLM.from_pretrained(pair_world["qwen"]).eval()
    with torch.no_grad():
        final = llama(ids, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(run_to_tap(llama, Tap("final"), ids, torch.ones_like(ids)), final)
        expected = qwen(inputs_embeds=model.bridge(final)).logits
    # The identity block keeps A's function (to 1e-5), so the oracle is the original Llama's state.
    assert torch.allclose(model(ids).logits, expected, atol=1e-4)
    assert model.bridge.grid.tiles == 6 and model.bridge.source_tap == "final"


def test_bad_model_input_is_refused_with_one_line(pair_world: dict[str, Path], wb: Cli, store_dir: Path) -> None:
    for name, folder in (("tl", "llama"), ("tq", "qwen"), ("tq-other", "qwen-other")):
        wb("ingest", pair_world[folder], "--name", name)
    common = ["prism", "fit", "--name", "bad", "--source", "tl", "--text", pair_world["train"]]
    before = snapshot(store_dir)
    for expected, args in {
        "tokenize the text differently": ["--target", "tq-other"],
        "tl has no such tap (it has 2 layers": ["--target", "tq", "--source-tap", "layer.7"],
        "running a model from its final hidden state": ["--target", "tq", "--target-tap", "final"],
    }.items():
        assert_refused(wb(*common, *args, ok=False), expected)
        assert snapshot(store_dir) == before
    typo = ["prism", "fit", "--name", "tq", "--source", "tl", "--target", "tq", "--text", pair_world["train"]]
    assert_refused(wb(*typo, ok=False), "tq holds base banks")
    assert snapshot(store_dir) == before
    pooled = json.loads(wb(*common, "--target", "tq-other", "--pool", "line", "--json").output)["grid"]["fit"]
    assert pooled["pairing"] == "line" and pooled["rows"]["train"] + pooled["rows"]["heldout"] == 80
    with pytest.raises(weightbank.WeightbankError, match="has hidden size 96, but the bridge's source side is 64"):
        weightbank.compose_bridged("tq", "bad", "tq", store=wb.store)
