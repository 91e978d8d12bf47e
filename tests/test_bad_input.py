"""Bad input: one clear error line, non-zero exit, and the store exactly as it was."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from weightbank.registry import Registry, SchemaError
from weightbank.registry.digest import digest_bytes
from weightbank.registry.manifests import canonical_json, manifest_path

from helpers import Cli, snapshot


def raw_safetensors(path: Path, header: object, data: bytes, header_len: int | None = None) -> None:
    """A safetensors file with whatever header we like (bytes are written as-is)."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)


def f32(shape: list[int], begin: int) -> dict[str, object]:
    n = 4
    for d in shape:
        n *= d
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + n]}


class _Boom:
    """Unpickling this would create a file: proof that pickle was never loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def model_folder(tmp_path: Path, tiny_folders) -> Path:
    folder = tmp_path / "bad-model"
    shutil.copytree(tiny_folders("llama"), folder)
    return folder


def break_truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def break_header_length(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", len(data) + 10) + data[8:])


def break_json(folder: Path) -> None:
    raw_safetensors(folder / "model.safetensors", b"{not json at all", b"\0" * 16)


def break_overlap(folder: Path) -> None:
    raw_safetensors(folder / "model.safetensors", {"a": f32([4], 0), "b": f32([4], 8)}, b"\0" * 24)


def break_out_of_range(folder: Path) -> None:
    raw_safetensors(folder / "model.safetensors", {"a": f32([4], 0), "b": f32([8], 16)}, b"\0" * 32)


def break_dtype(folder: Path) -> None:
    raw_safetensors(
        folder / "model.safetensors", {"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4
    )


def break_tensor_name(folder: Path) -> None:
    raw_safetensors(folder / "model.safetensors", {"../../escape": f32([2], 0)}, b"\0" * 8)


def break_absolute_tensor_name(folder: Path) -> None:
    raw_safetensors(folder / "model.safetensors", {"/etc/passwd": f32([2], 0)}, b"\0" * 8)


def break_shard_path(folder: Path) -> None:
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "../outside.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def break_absolute_shard_path(folder: Path) -> None:
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "/etc/hosts"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def break_into_pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    marker = folder.parent / "PICKLE-WAS-LOADED"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(str(marker))))


def _config_text(folder: Path, replace: str, by: str) -> None:
    config = folder / "config.json"
    config.write_text(config.read_text().replace(replace, by, 1))


def break_nan_config(folder: Path) -> None:
    _config_text(folder, '"rms_norm_eps": 1e-06', '"rms_norm_eps": NaN')


def break_surrogate_config(folder: Path) -> None:
    _config_text(folder, '"model_type": "llama"', '"model_type": "llama", "note": "\\ud800"')


def break_deep_config(folder: Path) -> None:
    _config_text(folder, '"model_type": "llama"', '"model_type": "llama", "deep": ' + "[" * 100000 + "]" * 100000)


def break_huge_int_config(folder: Path) -> None:
    _config_text(folder, '"model_type": "llama"', '"model_type": "llama", "big": ' + "9" * 5000)


def break_config_is_a_folder(folder: Path) -> None:
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()


def break_list_dtype(folder: Path) -> None:
    raw_safetensors(folder / "model.safetensors", {"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
                    b"\0" * 4)  # fmt: skip


def break_duplicate_header_key(folder: Path) -> None:
    header = (
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    )
    raw_safetensors(folder / "model.safetensors", header, b"\0" * 4)


def break_link_outside(folder: Path) -> None:
    secret = folder.parent / "credentials"
    secret.write_text("aws_secret_access_key = hunter2")
    (folder / "notes.txt").symlink_to(secret)


def break_fifo(folder: Path) -> None:
    os.mkfifo(folder / "tokenizer.json")


def break_fifo_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")


def break_non_utf8_name(folder: Path) -> None:
    with open(os.path.join(os.fsencode(folder), b"bad-\xff.txt"), "wb") as out:
        out.write(b"x")


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "nan-in-config": (break_nan_config, "NaN is not allowed"),
    "lone-surrogate-in-config": (break_surrogate_config, "surrogates not allowed"),
    "deep-nesting-in-config": (break_deep_config, "nested too deeply"),
    "huge-integer-in-config": (break_huge_int_config, "Exceeds the limit"),
    "config-is-a-folder": (break_config_is_a_folder, "not a regular file"),
    "list-as-dtype": (break_list_dtype, "unknown or unsupported dtype ['F32']"),
    "duplicate-header-key": (break_duplicate_header_key, "duplicate key 'a'"),
    "link-outside-the-folder": (break_link_outside, "links outside the model folder"),
    "fifo-file": (break_fifo, "not a regular file"),
    "fifo-weights": (break_fifo_weights, "not a regular file"),
    "non-utf8-file-name": (break_non_utf8_name, "is not valid UTF-8"),
    "truncated": (break_truncated, "truncated"),
    "header-length": (break_header_length, "runs past the end"),
    "non-json-header": (break_json, "not valid JSON"),
    "overlapping-offsets": (break_overlap, "overlapping"),
    "out-of-range-offsets": (break_out_of_range, "data section holds"),
    "unknown-dtype": (break_dtype, "unknown or unsupported dtype 'Q4'"),
    "dotdot-tensor-name": (break_tensor_name, "refusing tensor name"),
    "absolute-tensor-name": (break_absolute_tensor_name, "refusing tensor name"),
    "dotdot-file-name": (break_shard_path, "refusing file path '../outside.safetensors'"),
    "absolute-file-name": (break_absolute_shard_path, "refusing file path '/etc/hosts'"),
    "pickle-only": (break_into_pickle_only, "convert them to safetensors"),
}


@pytest.mark.parametrize("case", BREAKAGES)
def test_bad_model_folder_is_refused_and_store_unchanged(
    case: str, tiny_folders, wb: Cli, store_dir: Path, tmp_path: Path
) -> None:
    wb("ingest", tiny_folders("gpt2"), "--name", "existing")
    before = snapshot(store_dir)
    folder = model_folder(tmp_path, tiny_folders)
    breaker, expected = BREAKAGES[case]
    breaker(folder)

    result = wb("ingest", folder, "--name", "broken", ok=False)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert snapshot(store_dir) == before
    assert not (tmp_path / "PICKLE-WAS-LOADED").exists()


def _lora_for(base_folder: Path, out: Path, **config: object) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_folder), LoraConfig(**config))
    model.save_pretrained(out)
    return out


def test_adapter_for_the_wrong_base_is_refused(tiny_folders, wb: Cli, store_dir: Path, tmp_path: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "llama")
    wb("ingest", tiny_folders("llama", hidden_size=32, intermediate_size=64), "--name", "narrow")
    adapter = _lora_for(tiny_folders("llama"), tmp_path / "lora", r=2, target_modules=["q_proj", "down_proj"])
    before = snapshot(store_dir)

    result = wb("ingest", adapter, "--name", "lora", "--base", "narrow", ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: adapter does not fit base narrow: ")
    assert "q_proj.lora_A has shape [2, 64]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    gpt2 = wb("ingest", tiny_folders("gpt2"), "--name", "gpt2")
    assert gpt2.exit_code == 0
    before = snapshot(store_dir)
    result = wb("ingest", adapter, "--name", "lora", "--base", "gpt2", ok=False)
    assert "model.layers.0.self_attn.q_proj.weight, which base gpt2 does not have" in result.stderr
    assert snapshot(store_dir) == before

    no_base = wb("ingest", adapter, "--name", "lora", ok=False)
    assert "needs --base REF" in no_base.stderr
    assert snapshot(store_dir) == before
    ok = wb("ingest", adapter, "--name", "lora", "--base", "llama")
    assert ok.exit_code == 0


def test_schema_invalid_manifest_is_refused_on_write_and_read(tiny_folders, store_dir: Path) -> None:
    registry = Registry(store_dir)
    good = registry.show(registry.ingest(tiny_folders("llama"), "m").digest)
    before = snapshot(store_dir)

    bad = json.loads(json.dumps(good))
    bad["tensors"]["model.norm.weight"]["dtype"] = "F99"
    with pytest.raises(SchemaError, match="F99"):
        registry.store.manifests.put(bad)
    escaping = json.loads(json.dumps(good))
    escaping["files"]["../escape.json"] = escaping["files"].pop("config.json")
    with pytest.raises(SchemaError, match="escape"):
        registry.store.manifests.put(escaping)
    assert snapshot(store_dir) == before

    # A schema-invalid document planted in the store under its own (correct) digest.
    data = canonical_json(bad)
    digest = digest_bytes(data)
    planted = store_dir / manifest_path(digest)
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(data)
    with pytest.raises(SchemaError, match="not a valid MES v1 bank"):
        registry.show(digest)
    assert not registry.fsck().ok


def test_export_refuses_non_empty_folder_and_leaves_nothing(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = wb("export", "m", out, ok=False)
    assert result.exit_code == 1 and "not an empty folder" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unknown_ref_and_bad_names(wb: Cli, tiny_folders) -> None:
    wb.store.mkdir()  # an empty store (a missing one is another error, see test_cli_errors.py)
    assert "no ref named 'ghost'" in wb("show", "ghost", ok=False).stderr
    assert "invalid ref name" in wb("ingest", tiny_folders("llama"), "--name", "../up", ok=False).stderr
    assert "not a folder" in wb("ingest", "/definitely/missing", "--name", "x", ok=False).stderr


def test_links_inside_a_hugging_face_cache_snapshot_are_followed(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    """`…/models--org--name/snapshots/<rev>/` holds links into `../../blobs/`: ingested as files."""
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot_dir = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot_dir.mkdir(parents=True)
    for file in tiny_folders("llama").iterdir():
        blob = repo / "blobs" / f"sha-{file.name}"
        shutil.copyfile(file, blob)
        (snapshot_dir / file.name).symlink_to(os.path.relpath(blob, snapshot_dir))
    linked = json.loads(wb("ingest", snapshot_dir, "--name", "linked", "--json").stdout)
    plain = json.loads(wb("ingest", tiny_folders("llama"), "--name", "plain", "--json").stdout)
    assert linked["digest"] != "" and linked["new_objects"] > 0 and plain["new_objects"] == 0
