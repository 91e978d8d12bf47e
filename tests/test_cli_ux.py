"""What a new user meets on the command line: manifests read strictly and helpfully, banks
named by their refs, paths and refs never confused, and output shaped as git users expect."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner, Result
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, MixtralConfig, Phi3Config

from weightbank.cli.main import cli
from weightbank.composer.plan import make_plan
from weightbank.registry import Registry

from helpers import make_lora, snapshot


class Store:
    """`weightbank --store S …` in-process, from a working folder of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "store"

    def __call__(self, *args: object, ok: bool = True, input: str | None = None) -> Result:
        result = CliRunner().invoke(cli, ["--store", str(self.path), *map(str, args)], input=input)
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        if ok and result.exit_code != 0:
            raise AssertionError(f"weightbank {' '.join(map(str, args))}: {result.stderr}")
        return result

    def json(self, *args: object) -> object:
        return json.loads(self(*args, "--json").stdout)

    def fails(self, *args: object, input: str | None = None) -> str:
        """The one error line of a command that must fail."""
        return error_of(self(*args, ok=False, input=input))


@pytest.fixture(scope="module")
def wb(tiny_folders, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Base `m` (tiny Llama), base `other` (another seed), adapter `lo` trained on `m`."""
    store = Store(tmp_path_factory.mktemp("ux"))
    base = tiny_folders("llama")
    store("ingest", base, "--name", "m")
    store("ingest", tiny_folders("llama", seed=1), "--name", "other")
    lora = make_lora(base, store.root / "lora", 0, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    store("ingest", lora, "--name", "lo", "--base", "m")
    return store


def error_of(result: Result) -> str:
    assert result.exit_code != 0, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- composition manifests (YAML / JSON) ---------------------------------------------------


def test_yaml_errors_keep_line_and_column(wb: Store) -> None:
    spec = wb.root / "broken.yaml"
    spec.write_text('mes_version: "1"\nbase: m\nsteps:\n  - op: adapter.lora\n    bank: [lo\n')
    assert re.match(rf"error: {re.escape(str(spec))}:6:1: not valid YAML: ", wb.fails("compose", spec, "--dry-run"))
    as_json = wb.root / "broken.json"
    as_json.write_text('{"mes_version": "1",\n "base": "m", "steps": [}')
    assert f"{as_json}:2:25: not valid JSON: Expecting value" in wb.fails("compose", as_json, "--dry-run")


def test_duplicate_keys_are_refused_where_they_are(wb: Store) -> None:
    spec = wb.root / "twice.yaml"
    spec.write_text('mes_version: "1"\nbase: m\nbase: other\nsteps: []\n')
    assert f"{spec}:3:1: not valid YAML: key 'base' is given twice" in wb.fails("compose", spec, "--dry-run")
    as_json = wb.root / "twice.json"
    as_json.write_text('{"mes_version": "1", "base": "m", "steps": [], "base": "other"}')
    assert "key 'base' is given twice" in wb.fails("compose", as_json, "--dry-run")


def test_a_typo_is_named_as_an_unknown_key(wb: Store) -> None:
    spec = wb.root / "typo.yaml"
    spec.write_text('mes_version: "1"\nbase: m\nstep: []\n')
    assert "unknown key 'step' (did you mean steps?)" in wb.fails("compose", spec, "--dry-run")


def test_an_alias_bomb_is_refused_at_once(wb: Store) -> None:
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10⁹ strings
    bomb = "\n".join(['mes_version: "1"', "base: m", "steps: []", "metadata:", *(f"  {line}" for line in levels)])
    assert len(bomb) < 1024
    spec = wb.root / "bomb.yaml"
    spec.write_text(bomb)
    start = time.perf_counter()
    assert "aliases" in wb.fails("compose", spec, "--dry-run")
    assert time.perf_counter() - start < 5
    few = "\n".join(['mes_version: "1"', "base: m", "steps: []", "metadata:", *(f"  {line}" for line in levels[:4])])
    spec.write_text(few)  # 30 aliases, but 10⁴ values at the bottom: within the budget only just
    assert "more than 32 aliases" not in wb("compose", spec, "--dry-run", ok=False).stderr


def test_compose_reads_the_manifest_from_stdin(wb: Store) -> None:
    document = {"mes_version": "1", "base": "m", "steps": [{"op": "adapter.lora", "bank": "lo"}]}
    from_stdin = json.loads(wb("compose", "-", "--dry-run", "--json", input=yaml.safe_dump(document)).stdout)
    spec = wb.root / "same.json"
    spec.write_text(json.dumps(document))
    assert from_stdin == json.loads(wb("compose", spec, "--dry-run", "--json").stdout)
    assert "<stdin>:2:1: not valid YAML" in wb.fails("compose", "-", "--dry-run", input="steps: [\n")


def test_adapters_short_form_is_weight_one_each(wb: Store) -> None:
    store = Registry(wb.path).store
    short = make_plan(store, {"mes_version": "1", "base": "m", "steps": [{"op": "adapter.lora", "adapters": ["lo"]}]})
    long = make_plan(
        store, {"mes_version": "1", "base": "m", "steps": [{"op": "adapter.lora", "adapters": [{"bank": "lo"}]}]}
    )
    assert short.targets == long.targets and short.inputs == long.inputs
    assert short.resolved_spec["steps"][0]["adapters"] == [store.resolve("lo")]  # stored by digest, as the long form


# -- names, not digests ----------------------------------------------------------------------


def test_messages_name_refs_not_digests(wb: Store) -> None:
    spec = wb.root / "elsewhere.yaml"
    spec.write_text(
        yaml.safe_dump({"mes_version": "1", "base": "other", "steps": [{"op": "adapter.lora", "bank": "lo"}]})
    )
    message = wb.fails("compose", spec, "--dry-run")
    assert "lo was trained on base m@v1, not on this composition's base other@v1" in message
    assert not re.search(r"[0-9a-f]{64}", message)
    assert "lo is an adapter bank" in wb.fails("expand", "lo", "--name", "y", "--depth", "3")
    assert "(1 weight file, 2 other files," in wb("export", "m", wb.root / "exported").stdout


def test_unknown_refs_suggest_close_names(wb: Store) -> None:
    assert "no ref named 'mm'" in wb.fails("show", "mm")
    assert "(did you mean other?)" in wb.fails("show", "othre")
    assert "(did you mean other?)" in wb.fails("log", "othre")


def test_latest_and_bare_hex_prefixes_resolve(wb: Store, tiny_folders) -> None:
    digest = wb.json("show", "m")["digest"]
    assert wb.json("show", "m@latest")["digest"] == digest
    assert wb.json("show", digest.removeprefix("blake3:")[:8])["digest"] == digest
    assert "no ref named" in wb.fails("show", digest.removeprefix("blake3:")[:7])  # too short for a digest
    hex_name = digest.removeprefix("blake3:")[:10]
    wb("ingest", tiny_folders("llama", seed=2), "--name", hex_name)  # a ref whose name is m's digest prefix
    assert "both a ref name and a manifest digest prefix" in wb.fails("show", hex_name)
    assert wb.json("show", f"{hex_name}@latest")["digest"] not in (digest, None)


def test_a_folder_named_like_a_ref_never_silently_wins(wb: Store, tiny_folders, monkeypatch) -> None:
    monkeypatch.chdir(wb.root)
    shutil.copytree(tiny_folders("gpt2"), wb.root / "m", dirs_exist_ok=True)  # a folder `m` beside ref `m`
    assert "'m' is both a ref in the store and a folder here" in wb.fails("analyze", "m")
    assert wb.json("analyze", "./m")["family"] == "gpt2"
    assert wb.json("analyze", "m@latest")["family"] == "llama"
    assert "is both a ref" in wb.fails("compose", "m", "--dry-run")
    shutil.copytree(tiny_folders("gpt2"), wb.root / "lonely")  # no ref of that name: the folder it is
    assert wb.json("analyze", "lonely")["family"] == "gpt2"


# -- shapes of output ------------------------------------------------------------------------


def test_show_names_each_bank_types_facts_and_both_sizes(wb: Store) -> None:
    wb("expand", "m", "--name", "grown", "--depth", "3", "--ffn", "192")
    grown = wb("show", "grown").stdout
    assert "recipe      expand.ffn(size=192) + expand.depth(layers=3)" in grown
    target = Registry(wb.path).store.bank("grown").config
    from weightbank.composer.analyze import count_parameters

    assert f"target      {count_parameters(target):,} parameters (LlamaForCausalLM)" in grown
    assert "parent      base: m@v" in grown and "0 parameters" not in grown.split("target")[1]
    adapter = wb("show", "lo").stdout
    assert "adapter     LoRA r=4, alpha=8, targets q_proj, v_proj" in adapter and "base: m@v1 (blake3:" in adapter
    bank = Registry(wb.path).store.bank("other")
    from weightbank.cli.output import human_bytes

    shown = wb("show", "other").stdout
    assert f"21 tensors ({human_bytes(bank.tensor_bytes)} of tensor data)" in shown
    assert f"2 files ({human_bytes(bank.file_bytes)}): config.json, generation_config.json" in shown


def test_ingest_names_tensor_and_file_bytes(tiny_folders, tmp_path: Path) -> None:
    store = Store(tmp_path)
    line = store("ingest", tiny_folders("qwen2"), "--name", "q").stdout
    bank = Registry(store.path).store.bank("q")
    from weightbank.cli.output import human_bytes

    assert (
        f"tensors ({human_bytes(bank.tensor_bytes)} of tensor data), 2 files ({human_bytes(bank.file_bytes)})" in line
    )
    assert f"({human_bytes(bank.tensor_bytes)} of tensor data)" in store("show", "q").stdout


def test_log_is_newest_first_with_count_and_reverse(tiny_folders, tmp_path: Path) -> None:
    store = Store(tmp_path)
    store("ingest", tiny_folders("llama"), "--name", "h", "-m", "one")
    store("ingest", tiny_folders("llama", seed=1), "--name", "h", "-m", "two")
    store("rollback", "h", "--to", "1", "-m", "three")
    assert [line.split()[0] for line in store("log", "h").stdout.splitlines()] == ["v3", "v2", "v1"]
    assert [e["version"] for e in store.json("log", "h", "-n", "2")] == [3, 2]
    assert [e["version"] for e in store.json("log", "h", "--reverse")] == [1, 2, 3]
    assert [e["version"] for e in store.json("log", "h", "-n", "2", "--reverse")] == [2, 3]  # as git log does


def test_lineage_formats(wb: Store) -> None:
    assert wb("lineage", "lo", "--json").stdout == wb("lineage", "lo", "--format", "json").stdout
    assert "cannot be combined with --format dot" in wb.fails("lineage", "lo", "--json", "--format", "dot")
    dot = wb("lineage", "lo", "--format", "dot").stdout
    assert "— ingest by" in dot and "\\u2014" not in dot  # the em dash as itself, not JSON's escape
    assert re.search(r'^  "blake3:[0-9a-f]{64}" -> "blake3:[0-9a-f]{64}" \[label="base"\];$', dot, re.M)
    mermaid = wb("lineage", "lo", "--format", "mermaid").stdout.splitlines()
    assert mermaid[0] == "graph BT" and re.fullmatch(
        r'  n0\["blake3:[0-9a-f]{12} adapter \[lo@v1\] — .*"\]', mermaid[1]
    )
    assert "  n0 -->|base| n1" in mermaid


def test_dot_strings_are_quoted_for_graphviz() -> None:
    from weightbank.registry.provenance import dot_string

    assert dot_string('a "b" \\ c — d\n') == '"a \\"b\\" \\\\ c — d\\n"'


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_lineage_draws_svg_with_graphviz(wb: Store) -> None:
    svg = wb("lineage", "lo", "--format", "svg").stdout
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "lo@v1" in svg and "—" in svg
    dot = wb("lineage", "lo", "--format", "dot").stdout
    assert subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, check=True).stdout == svg
    assert wb("lineage", "lo", "--format", "png").stdout_bytes.startswith(b"\x89PNG\r\n")


def test_analyze_families_without_a_growth_table(tmp_path: Path) -> None:
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    for name, config in (("phi3", Phi3Config(**small)), ("mixtral", MixtralConfig(**small, num_local_experts=4))):
        config.save_pretrained(tmp_path / name)
        record = Store(tmp_path)  # no store is needed for a folder
        found = json.loads(record("analyze", tmp_path / name, "--json").stdout)
        assert found["parameters"] == AutoModelForCausalLM.from_config(config).num_parameters()
        assert (found["layers"], found["hidden"], found["kv_heads"], found["intermediate"]) == (2, 64, 2, 128)
        assert found["growth"] == "unsupported" and f"no architecture table for model_type {name!r}" in found["reason"]
        assert found["operators"]["expand.depth"]["support"] == "unsupported"
        text = record("analyze", tmp_path / name).stdout
        assert f"{name} (no growth table)" in text and f"{found['parameters']:,}" in text
    assert found["config"]["num_local_experts"] == 4


# -- verify against a bank -------------------------------------------------------------------


def test_verify_against_a_bfloat16_bank_compares_at_its_precision(wb: Store) -> None:
    spec = wb.root / "bf16.yaml"
    steps = [{"op": "adapter.lora", "bank": "lo"}]
    spec.write_text(yaml.safe_dump({"mes_version": "1", "base": "m", "dtype": "bfloat16", "steps": steps}))
    wb("compose", spec, "--name", "merged16")
    report = wb.json("verify", spec, "--against", "merged16")
    assert report["ok"] and report["max_abs_diff"] == 0.0
    assert report["precision"] == "bfloat16 weights, float32 arithmetic" and report["against"] == "merged16"
    text = wb("verify", spec, "--against", "merged16").stdout
    assert text.startswith("ok: max-abs difference 0 vs from_pretrained(merged16) (bfloat16 weights")
    own = wb.json("verify", spec)  # against its own oracle: float32 weights, as before
    assert own["ok"] and own["precision"].startswith("float32 weights")


# -- export ------------------------------------------------------------------------------------


def test_export_of_a_composed_bank_is_what_save_pretrained_writes(tiny_folders, tmp_path: Path) -> None:
    """No source layout: save_pretrained's default shard size and safetensors' own tensor order
    (with 11 layers, natural and alphabetical orders differ: layers.10 sorts before layers.2)."""
    source = tiny_folders("llama", num_hidden_layers=11)
    store = Store(tmp_path)
    store("ingest", source, "--name", "eleven")
    store("compose", "eleven", "--name", "recomposed")
    assert "metadata" not in Registry(store.path).store.bank("recomposed").document
    store("export", "recomposed", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["lm_head.weight"],
                       load_file(source / "model.safetensors")["lm_head.weight"])  # fmt: skip


def test_default_shard_size_is_the_installed_transformers_one() -> None:
    import inspect

    from transformers import PreTrainedModel

    from weightbank.registry.checkpoints import default_max_shard_size

    expected = inspect.signature(PreTrainedModel.save_pretrained).parameters["max_shard_size"].default
    assert default_max_shard_size() == expected == "50GB"


def test_one_dtype_table_of_our_own() -> None:
    from weightbank.composer.dtypes import TORCH_DTYPES, from_torch, to_torch
    from weightbank.registry.safetensors_format import DTYPE_SIZES

    assert TORCH_DTYPES.keys() == DTYPE_SIZES.keys()
    for code, size in DTYPE_SIZES.items():
        dtype = to_torch(code)
        assert dtype.itemsize == size and from_torch(dtype) == code
    assert to_torch("F8_E8M0") == torch.float8_e8m0fnu


def test_unchanged_store_after_refused_yaml(wb: Store) -> None:
    before = snapshot(wb.path)
    wb.fails("compose", "-", "--name", "never", input='mes_version: "1"\nbase: m\nbase: m\nsteps: []\n')
    assert snapshot(wb.path) == before
