"""Consolidation: EMA over versions (base, expansion, adapter) and delta pruning, as
composer steps and as the atomic `consolidate` command, checked against NumPy and PEFT."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from weightbank.composer import compose
from weightbank.registry import Registry

from helpers import Cli, make_lora, snapshot

DECAY = 0.9


def retrained(source: Path, out: Path, seed: int, names: list[str]) -> Path:
    """A copy of a model folder with `names` moved a little, as training would."""
    shutil.copytree(source, out)
    weights = out / "model.safetensors"
    tensors = load_file(weights)
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        tensors[name] = tensors[name] + 0.01 * torch.randn(tensors[name].shape, generator=generator)
    save_file(tensors, weights, metadata={"format": "pt"})
    return out


def numpy_ema(folders: list[Path], decay: float = DECAY) -> dict[str, np.ndarray]:
    """m ← W₁, then m ← β·m + (1 − β)·W_v, in float32, from safetensors folders."""
    loaded = [load_numpy(folder / "model.safetensors") for folder in folders]
    average = {name: value.astype(np.float32) for name, value in loaded[0].items()}
    for tensors in loaded[1:]:
        for name in average:
            average[name] = np.float32(decay) * average[name] + np.float32(1 - decay) * tensors[name]
    return average


@pytest.fixture(scope="module")
def four_versions_store(tiny_folders, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict]:
    """A store whose ref `m` has 4 versions of a tiny Llama (version v changes every 4th tensor
    from v), and a GPT-2 named `other`; made once, copied by each test."""
    work = tmp_path_factory.mktemp("four-versions")
    wb = Cli(work / "store")
    first = tiny_folders("llama")
    names = sorted(load_file(first / "model.safetensors"))
    wb("ingest", first, "--name", "m")
    changed, source = {}, first
    for version in (2, 3, 4):
        changed[version] = set(names[version::4])
        source = retrained(source, work / f"v{version}", version, sorted(changed[version]))
        wb("ingest", source, "--name", "m")
    wb("ingest", tiny_folders("gpt2"), "--name", "other")
    return work / "store", names, changed


@pytest.fixture
def four_versions(four_versions_store, store_dir: Path) -> tuple[list[str], dict[int, set[str]]]:
    """This test's own copy of the four-version store (at `store_dir`, where `wb` works)."""
    template, names, changed = four_versions_store
    shutil.copytree(template, store_dir)
    return names, changed


def shown(wb: Cli, ref: str) -> dict:
    """The manifest `ref` names, as `show --json` prints it."""
    return json.loads(wb("show", ref, "--json").stdout)["manifest"]


def exported(wb: Cli, ref: str, tmp_path: Path) -> Path:
    folder = tmp_path / ref.replace("@", "-")
    if not folder.exists():
        wb("export", ref, folder)
    return folder


def test_ema_of_four_versions_equals_numpy_and_keeps_unchanged_digests(four_versions, wb: Cli, tmp_path: Path) -> None:
    names, changed = four_versions
    out = json.loads(wb("consolidate", "m", "--ema", DECAY, "--versions", "1..4", "-m", "nightly", "--json").stdout)
    assert (out["name"], out["version"], out["started_from"], out["bank_type"]) == ("m", 5, 4, "base")
    touched = set().union(*changed.values())
    assert (out["computed"], out["unchanged"], out["new_objects"]) == (
        len(touched),
        len(names) - len(touched),
        len(touched),
    )
    weights = [i["weight"] for i in out["inputs"]]
    assert weights == pytest.approx([DECAY**3, 0.1 * DECAY**2, 0.1 * DECAY, 0.1]) and math.isclose(sum(weights), 1)

    expected = numpy_ema([exported(wb, f"m@v{v}", tmp_path) for v in (1, 2, 3, 4)])
    result = load_numpy(exported(wb, "m@v5", tmp_path) / "model.safetensors")
    for name in names:
        np.testing.assert_allclose(result[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    first, ema = (shown(wb, ref)["tensors"] for ref in ("m@v1", "m@v5"))
    assert {n for n in names if ema[n]["digest"] == first[n]["digest"]} == set(names) - touched

    manifest = shown(wb, "m@v5")
    activity = manifest["provenance"]["activity"]
    assert activity["operator"] == "consolidate" and activity["message"] == "nightly"
    assert [i["ref"] for i in activity["parameters"]["inputs"]] == [f"m@v{v}" for v in (1, 2, 3, 4)]
    parent_digests = {p["digest"] for p in manifest["provenance"]["parents"]}
    assert {Registry(wb.store).resolve(f"m@v{v}") for v in (1, 2, 3, 4)} <= parent_digests
    assert "consolidate" in wb("log", "m").stdout


def test_dry_run_reads_nothing_and_publishes_nothing(four_versions, wb: Cli, store_dir: Path) -> None:
    before = snapshot(store_dir)
    out = wb("consolidate", "m", "--ema", "0.5", "--versions", "2,4", "-m", "x", "--dry-run").stdout
    assert "would append m@v5 after v4" in out and "input m@v4" in out and "input m@v3" not in out
    assert snapshot(store_dir) == before


def test_ema_over_expansion_versions_resolves_each_through_its_recipe(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "base")
    wb("expand", "base", "--name", "grown", "--depth", "4")
    folders = [tmp_path / "grown-v1"]
    wb("compose", "grown", "--out", folders[0])  # the recipe's full model (version 1 stores no tensor)
    trained = {
        2: ["model.layers.1.mlp.down_proj.weight", "model.norm.weight"],
        3: ["model.layers.2.self_attn.o_proj.weight", "model.norm.weight"],
    }
    for version, names in trained.items():
        folders.append(retrained(folders[-1], tmp_path / f"grown-v{version}", version, names))
        wb("ingest", folders[-1], "--as-version-of", "grown")
    spec = {"mes_version": "1", "base": "grown@v3",
            "steps": [{"op": "consolidate.ema", "bank": "grown", "versions": [1, 2, 3], "decay": 0.5}]}  # fmt: skip
    store = Registry(wb.store).store
    model, _ = compose(spec, store=store)
    expected = numpy_ema(folders, 0.5)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), expected[name], rtol=1e-6, atol=1e-7, err_msg=name)

    out = json.loads(wb("consolidate", "grown", "--ema", "0.5", "--versions", "1..3", "-m", "ema", "--json").stdout)
    assert out["bank_type"] == "expansion" and out["version"] == 4
    stored = shown(wb, "grown@v4")
    assert set(stored["tensors"]) == set(trained[2]) | set(trained[3])  # the rest is the recipe's output
    assert stored["recipe"] == shown(wb, "grown@v1")["recipe"]
    consolidated, _ = compose("grown@v4", store=store)
    for name, value in consolidated.state_dict().items():
        assert torch.equal(value, model.state_dict()[name]), name


def test_ema_over_adapter_versions_averages_merged_deltas(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    base = tiny_folders("llama")
    wb("ingest", base, "--name", "base")
    adapters = [
        make_lora(base, tmp_path / f"lora{s}", seed=s, r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
        for s in (1, 2, 3)
    ]
    for adapter in adapters:
        wb("ingest", adapter, "--name", "lora", "--base", "base")
    spec = {"mes_version": "1", "base": "base",
            "steps": [{"op": "consolidate.ema", "bank": "lora", "versions": "1..3", "decay": DECAY}]}  # fmt: skip
    model, _ = compose(spec, store=Registry(wb.store).store)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert wb("verify", tmp_path / "spec.json").stdout.startswith("ok: ")  # vs PEFT merging each version
    merged = []
    for adapter in adapters:
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
        merged.append({k: v.numpy() for k, v in peft_model.merge_and_unload().state_dict().items()})
    weights = [DECAY**2, 0.1 * DECAY, 0.1]
    for name, value in model.state_dict().items():
        expected = sum(w * m[name].astype(np.float64) for w, m in zip(weights, merged, strict=True))
        np.testing.assert_allclose(value.numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)

    # Averaging the factors instead is a different model: B̄·Ā ≠ Σ wᵢ·Bᵢ·Aᵢ.
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    factors = [load_file(a / "adapter_model.safetensors") for a in adapters]
    a_bar = sum(w * f[f"{module}.lora_A.weight"] for w, f in zip(weights, factors, strict=True))
    b_bar = sum(w * f[f"{module}.lora_B.weight"] for w, f in zip(weights, factors, strict=True))
    deltas = sum(
        w * f[f"{module}.lora_B.weight"] @ f[f"{module}.lora_A.weight"] for w, f in zip(weights, factors, strict=True)
    )
    assert (b_bar @ a_bar - deltas).norm() > 0.3 * deltas.norm()

    refused = wb("consolidate", "lora", "--ema", "0.9", "--versions", "1..3", "-m", "x", ok=False)
    assert refused.exit_code == 1 and "give it its own name with --as NEW" in refused.stderr
    out = json.loads(
        wb("consolidate", "lora", "--ema", DECAY, "--versions", "1..3", "--as", "merged", "-m", "x", "--json").stdout
    )
    assert (out["name"], out["version"], out["bank_type"]) == ("merged", 1, "base")
    stored, _ = compose("merged", store=Registry(wb.store).store)
    assert all(torch.equal(v, model.state_dict()[n]) for n, v in stored.state_dict().items())


def numpy_trim(value: np.ndarray, parent: np.ndarray, count: int) -> np.ndarray:
    """The mask of the `count` largest |Δ| (ties with the last kept too; Δ = 0 never kept)."""
    magnitude = np.abs(value.astype(np.float32) - parent.astype(np.float32))
    if count == 0:
        return np.zeros(magnitude.shape, bool)
    kth = np.sort(magnitude, axis=None)[::-1][count - 1]
    return (magnitude >= kth) & (magnitude > 0)


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_prune_keep_one_zero_and_between_match_a_numpy_recount(
    four_versions, wb: Cli, tmp_path: Path, scope: str
) -> None:
    names, _ = four_versions
    digests = {ref: shown(wb, ref)["tensors"] for ref in ("m@v1", "m@v4")}
    args = ["--parent", "m@v1", "--prune-scope", scope, "-m", "prune", "--json"]

    wb("consolidate", "m", "--prune-keep", "1", *args)
    assert shown(wb, "m@v5")["tensors"] == digests["m@v4"]  # the identity
    out = json.loads(wb("consolidate", "m", "--prune-keep", "0", "--as", "to-parent", *args).stdout)
    assert shown(wb, "to-parent")["tensors"] == digests["m@v1"]  # the parent
    assert out["new_objects"] == 0 and out["pruning_total"]["kept"] == 0
    assert out["pruning_total"]["bytes_saved"] == sum(out["pruning"][n]["elements"] * 4 for n in out["pruning"])

    keep = 0.3
    out = json.loads(wb("consolidate", "m", "--prune-keep", keep, "--as", "pruned", *args).stdout)
    value, parent = (load_numpy(exported(wb, ref, tmp_path) / "model.safetensors") for ref in ("m@v4", "m@v1"))
    result = load_numpy(exported(wb, "pruned", tmp_path) / "model.safetensors")
    elements = sum(v.size for v in value.values())
    if scope == "global":
        magnitudes = np.concatenate([np.abs(value[n] - parent[n]).reshape(-1) for n in names])
        count = math.floor(keep * elements)
        kth = np.sort(magnitudes)[::-1][count - 1]
        masks = {n: (np.abs(value[n] - parent[n]) >= kth) & (value[n] != parent[n]) for n in names}
    else:
        masks = {n: numpy_trim(value[n], parent[n], math.floor(keep * value[n].size)) for n in names}
    for name in names:
        np.testing.assert_array_equal(result[name], np.where(masks[name], value[name], parent[name]), err_msg=name)
        if name not in out["pruning"]:
            assert np.array_equal(value[name], parent[name])  # unchanged tensors are not pruned
            continue
        report, deviation = out["pruning"][name], np.where(masks[name], 0, value[name] - parent[name])
        assert report["kept"] == masks[name].sum() and report["changed"] == (value[name] != parent[name]).sum()
        assert report["max_deviation"] == pytest.approx(np.abs(deviation).max(), rel=1e-6)
        assert report["rms_deviation"] == pytest.approx(np.sqrt(np.mean(deviation.astype(np.float64) ** 2)), rel=1e-5)
    total = out["pruning_total"]
    assert total["elements"] == elements and total["kept"] == sum(m.sum() for m in masks.values())
    if scope == "global":
        assert total["kept"] == math.floor(keep * elements)  # random deltas: no ties
        assert any(abs(out["pruning"][n]["kept"] / value[n].size - keep) > 0.05 for n in out["pruning"])


def test_prune_threshold_and_ema_then_prune(four_versions, wb: Cli, tmp_path: Path) -> None:
    names, changed = four_versions
    out = json.loads(wb("consolidate", "m", "--ema", DECAY, "--versions", "1..4", "--prune-threshold", "0.002",
                        "--parent", "m@v1", "-m", "sleep", "--json").stdout)  # fmt: skip
    expected = numpy_ema([exported(wb, f"m@v{v}", tmp_path) for v in (1, 2, 3, 4)])
    parent = load_numpy(exported(wb, "m@v1", tmp_path) / "model.safetensors")
    result = load_numpy(exported(wb, "m@v5", tmp_path) / "model.safetensors")
    for name in names:
        magnitude = np.abs(expected[name] - parent[name])
        clear = np.abs(magnitude - 0.002) > 1e-6  # fp32 rounding cannot move these across τ
        keep = magnitude > 0.002
        trimmed = np.where(keep, expected[name], parent[name])
        np.testing.assert_allclose(result[name][clear], trimmed[clear], rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(result[name][clear & ~keep], parent[name][clear & ~keep])  # the parent's, exactly
    assert [i["role"] for i in out["inputs"]] == ["ema"] * 4 + ["prune-parent"]
    assert set(out["pruning"]) == set().union(*changed.values())


def test_verify_checks_ema_and_prune_against_the_peers(four_versions, wb: Cli, tmp_path: Path) -> None:
    spec = tmp_path / "sleep.json"
    steps = [{"op": "consolidate.ema", "bank": "m", "versions": "1..4", "decay": DECAY},
             {"op": "consolidate.prune", "parent": "m@v1", "keep": 0.25, "scope": "global"}]  # fmt: skip
    spec.write_text(json.dumps({"mes_version": "1", "base": "m@v4", "steps": steps}))
    report = json.loads(wb("verify", spec, "--json").stdout)
    assert report["ok"] and report["oracle"].endswith("consolidate.ema oracle + consolidate.prune oracle")


RACER = """
import pathlib, sys, time
from weightbank.registry.store import Store
ready, go, *argv = sys.argv[1:]
publish = Store.record
def paused(self, *args, **kwargs):  # stop between computing and publishing, until told
    pathlib.Path(ready).touch()
    while not pathlib.Path(go).exists():
        time.sleep(0.01)
    return publish(self, *args, **kwargs)
Store.record = paused
from weightbank.cli.main import cli
cli(argv, prog_name="weightbank")
"""


def test_consolidate_racing_a_publish_from_another_process_loses_cleanly(
    four_versions, wb: Cli, store_dir: Path, tmp_path: Path
) -> None:
    ready, go = tmp_path / "ready", tmp_path / "go"
    racer = subprocess.Popen(
        [sys.executable, "-c", RACER, str(ready), str(go), "--store", str(store_dir), "consolidate", "m",
         "--ema", "0.9", "--versions", "1..4", "-m", "race", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "WEIGHTBANK_AGENT": "racer"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready.exists():  # the racer has computed its result against v4 and is about to publish
        assert time.monotonic() < deadline and racer.poll() is None, racer.communicate()
        time.sleep(0.05)
    won = json.loads(wb("consolidate", "m", "--prune-keep", "0.5", "--parent", "m@v1", "-m", "me", "--json").stdout)
    go.touch()
    code, (stdout, stderr) = racer.wait(120), racer.communicate()
    assert won["version"] == 5 and code == 1 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1 and "nothing was published" in stderr
    assert stderr.startswith("error: m moved while consolidating: it was at v4 when consolidate started, and m@v5 was "
                             "published by ")  # fmt: skip
    history = Registry(store_dir).log("m")
    assert [e.version for e in history] == [1, 2, 3, 4, 5] and history[-1].target == won["digest"]
    assert history[-1].message == "me"
    unnamed = Registry(store_dir).gc(dry_run=True, grace_seconds=0)
    assert len(unnamed.manifests) == 2 and unnamed.objects  # the racer's bank and composition, and its tensors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to do"),
        (["--ema", "0.9"], "--ema β and --versions A..B go together"),
        (["--ema", "0.9", "--versions", "4..2"], "runs backwards"),
        (["--ema", "0.9", "--versions", "1..9"], "m@v9 does not exist"),
        (["--ema", "1.5", "--versions", "1..2"], "decay must be in [0, 1]"),
        (["--prune-keep", "0.5"], "--parent REF go together"),
        (["--prune-keep", "1.5", "--parent", "m@v1"], "keep is a fraction in [0, 1]"),
        (["--prune-keep", "0.5", "--parent", "nope"], "no ref named 'nope'"),
        (["--prune-keep", "0.5", "--prune-threshold", "0.1", "--parent", "m@v1"], "not both"),
        (["--prune-keep", "0.5", "--parent", "m@v1", "--as", "bad/name"], "invalid ref name"),
        (["--prune-keep", "0.5", "--parent", "other"], "other lacks model.embed_tokens.weight"),
    ],
)
def test_bad_consolidations_are_refused_and_change_nothing(
    four_versions, wb: Cli, store_dir: Path, args: list[str], message: str
) -> None:
    before = snapshot(store_dir)
    result = wb("consolidate", "m", *args, "-m", "x", ok=False)
    assert result.exit_code != 0 and message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(store_dir) == before


def test_consolidate_of_a_missing_ref_and_of_no_message(four_versions, wb: Cli, store_dir: Path) -> None:
    before = snapshot(store_dir)
    result = wb("consolidate", "nope", "--ema", "0.9", "--versions", "1..2", "-m", "x", ok=False)
    assert result.exit_code == 1 and result.stderr.startswith("error: no ref named 'nope'")
    assert wb("consolidate", "m", "--ema", "0.9", "--versions", "1..2", ok=False).exit_code == 2  # -m is required
    assert snapshot(store_dir) == before


def test_trim_counts_ties_and_zeros_the_documented_way() -> None:
    from weightbank.composer.operators.prune import kth_largest, trim

    delta = torch.tensor([0.0, 0.0, -3.0, 1.0, 1.0, 2.0, -1.0, 0.5])
    assert kth_largest(lambda: [delta.abs()], 1) == 3.0
    assert kth_largest(lambda: [delta.abs()[:4], delta.abs()[4:]], 4) == 1.0  # over chunks
    assert kth_largest(lambda: [delta.abs()], 100) == 0.0 and kth_largest(lambda: [delta.abs()], 0) == math.inf
    assert trim(delta, keep=0.5).tolist() == [False, False, True, True, True, True, True, False]  # ties kept
    assert trim(delta, keep=1.0).tolist() == (delta != 0).tolist()  # zeros never kept
    assert trim(delta, threshold=1.0).tolist() == [False, False, True, False, False, True, False, False]
    values = torch.randn(10_000) * torch.logspace(-30, 30, 10_000)  # every exponent range
    for k in (1, 77, 5_000, 10_000):
        assert kth_largest(lambda: [values.abs()], k) == values.abs().sort(descending=True).values[k - 1].item()


def test_removed_versions_are_refused_and_the_publish_follows_the_tombstone(four_versions, wb: Cli, store_dir: Path):
    wb("rm", "m@v3")
    before = snapshot(store_dir)
    refused = wb("consolidate", "m", "--ema", "0.9", "--versions", "1..4", "-m", "x", ok=False)
    assert refused.exit_code == 1 and "m@v3 was removed by m@v5" in refused.stderr
    assert snapshot(store_dir) == before
    out = json.loads(wb("consolidate", "m", "--ema", "0.9", "--versions", "1,2,4", "-m", "x", "--json").stdout)
    assert (out["started_from"], out["version"]) == (5, 6)
    assert [i["ref"] for i in out["inputs"]] == ["m@v1", "m@v2", "m@v4"]
