"""`context.rope`: transformers 5 rope_parameters for every scaling type, checked against
transformers' own model built with them; dynamic is unchanged within the original length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from weightbank.composer import compose, write
from weightbank.registry import Registry

from helpers import Cli, snapshot

ORIGINAL = 128  # the tiny models' max_position_embeddings
LONG = torch.arange(2 * ORIGINAL + 40).unsqueeze(0) % 128  # beyond the original maximum
SHORT = torch.arange(ORIGINAL).unsqueeze(0) % 128  # the whole original window
HALF_HEAD = 8  # tiny head_dim 16
STEPS = {
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 4.0},
    "yarn": {"factor": 4.0, "beta_fast": 16},
    "longrope": {"factor": 4.0, "short_factor": [1.0] * HALF_HEAD,
                 "long_factor": [1.0 + i / 4 for i in range(HALF_HEAD)]},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
}  # fmt: skip
# What transformers' rope_parameters must hold beyond the step's own keys, and the new maximum.
EXPECTED_MAX = {"linear": 256, "dynamic": ORIGINAL, "yarn": 512, "longrope": 512, "llama3": 1024}


@pytest.fixture(scope="module")
def rope_store(tmp_path_factory: pytest.TempPathFactory, tiny_folders) -> Path:
    folder = tmp_path_factory.mktemp("rope")
    registry = Registry(folder)
    for family in ("llama", "qwen2"):
        registry.ingest(tiny_folders(family), family)
    return folder


def logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("rope_type", list(STEPS))
def test_every_type_runs_beyond_the_original_length_as_transformers_builds_it(
    rope_store: Path, tiny_folders, family: str, rope_type: str
) -> None:
    step = {"op": "context.rope", "type": rope_type, **STEPS[rope_type]}
    model, _ = compose({"mes_version": "1", "base": family, "steps": [step]}, store=rope_store)
    parameters = model.config.rope_parameters
    assert parameters["rope_type"] == rope_type and parameters["rope_theta"] == 10000.0
    assert all(parameters[key] == value for key, value in STEPS[rope_type].items())
    assert model.config.max_position_embeddings == EXPECTED_MAX[rope_type]
    if rope_type in ("yarn", "longrope", "llama3"):
        assert parameters["original_max_position_embeddings"] == ORIGINAL

    overrides = {"rope_parameters": dict(parameters), "max_position_embeddings": EXPECTED_MAX[rope_type]}
    peer = AutoModelForCausalLM.from_pretrained(tiny_folders(family), **overrides).eval()
    unscaled = AutoModelForCausalLM.from_pretrained(tiny_folders(family)).eval()
    # (the original window first: transformers' dynamic RoPE keeps the rescaled frequencies
    # for an input of exactly the original length once it has seen a longer one)
    within = (logits(model, SHORT) - logits(unscaled, SHORT)).abs().max().item()
    long = logits(model, LONG)
    assert torch.isfinite(long).all()
    assert (long - logits(peer, LONG)).abs().max() <= 1e-5
    if rope_type == "dynamic":
        assert within <= 1e-5  # dynamic NTK leaves the original window alone
        assert (long - logits(unscaled, LONG)).abs().max() > 1e-3  # and rescales beyond it
    else:
        assert within > 1e-4  # the others change the function everywhere


def test_verify_measures_instead_of_calling_scaling_lossless(rope_store: Path, tmp_path: Path) -> None:
    wb, spec = Cli(rope_store), tmp_path / "spec.json"
    for rope_type in ("dynamic", "yarn"):
        step = {"op": "context.rope", "type": rope_type, **STEPS[rope_type]}
        spec.write_text(json.dumps({"mes_version": "1", "base": "llama", "steps": [step]}))
        report = json.loads(wb("verify", spec, "--json").stdout)
        assert report["ok"] and report["max_abs_diff"] == 0  # the composed model is transformers' scaled one
        inside, beyond = report["effects"]
        assert inside["tokens"] == ORIGINAL and beyond["tokens"] == ORIGINAL + 32
        if rope_type == "dynamic":
            assert inside["max_abs_diff"] <= 1e-5 and inside["tolerance"] == 1e-5
        else:
            assert inside["max_abs_diff"] > 1e-4 and inside["tolerance"] is None and inside["ok"]
        assert beyond["max_abs_diff"] > 1e-4 and beyond["tolerance"] is None
    lines = wb("verify", spec).stdout.splitlines()  # yarn, as text
    assert lines[0].startswith("ok: max-abs difference 0 vs from_pretrained(base) + context.rope oracle")
    assert f"at {ORIGINAL} tokens, within the original {ORIGINAL} (not function-preserving)" in lines[1]
    assert f"at {ORIGINAL + 32} tokens, beyond the original {ORIGINAL} (not function-preserving)" in lines[2]


@pytest.mark.parametrize(
    ("base", "step", "message"),
    [
        ("gpt2", {"type": "linear", "factor": 2.0}, "learned positions, which cannot be extended without training"),
        ("llama", {"type": "ntk", "factor": 2.0}, "type must be one of linear, dynamic, yarn, longrope, llama3"),
        ("llama", {"type": "linear", "factor": 0.5}, "factor field must be a float or int >= 1, got 0.5"),
        ("llama", {"type": "linear", "factor": 2.0, "beta_fast": 8}, "Unrecognized keys"),
        ("llama", {"type": "yarn"}, "yarn needs factor"),
        ("llama", {"type": "llama3", "factor": 8.0}, "Missing required keys"),
        ("llama", {"type": "longrope", "factor": 2.0, "short_factor": [1.0], "long_factor": [1.0]},
         "short_factor field must have length 8, got 1"),
        ("llama", {"type": "dynamic", "factor": 2.0, "max_position_embeddings": 512}, "dynamic keeps max_position"),
        ("llama", {"type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "unknown parameter(s)"),
    ],
)  # fmt: skip
def test_refused_rope_steps_change_nothing(
    tiny_folders, wb: Cli, store_dir: Path, tmp_path: Path, base: str, step: dict, message: str
) -> None:
    wb("ingest", tiny_folders(base), "--name", base)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"mes_version": "1", "base": base, "steps": [{"op": "context.rope", **step}]}))
    before = snapshot(store_dir)
    result = wb("compose", spec, "--name", "scaled", "--out", tmp_path / "out", ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: composition refused")
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(store_dir) == before and not (tmp_path / "out").exists()


def test_scaled_folder_and_bank_keep_every_tensor(rope_store: Path, tmp_path: Path) -> None:
    step = {"op": "context.rope", "type": "yarn", "factor": 2.0}
    registry = Registry(rope_store)
    result = write({"mes_version": "1", "base": "llama", "steps": [step]}, out_dir=tmp_path / "out", name="long",
                   store=registry.store)  # fmt: skip
    assert result.new_objects == 1  # only config.json is new: every tensor is the base's
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn" and config["max_position_embeddings"] == 256
    assert registry.show("long")["tensors"] == registry.show("llama")["tensors"]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.rope_parameters["factor"] == 2.0
