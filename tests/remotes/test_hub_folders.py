"""`ingest hf://ORG/REPO[@REV]` against the Hub double: the same bank as a local ingest of the
same folder, read by range requests (counted by the double), and only what is new."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from hub_server import HubDouble
from safetensors.torch import load_file, save_file

from weightbank.registry import Store, range_reads

from helpers import Cli, make_lora, snapshot


def publish_folder(hub: HubDouble, repo: str, folder: Path, **options: object) -> str:
    """A repo holding `folder` as its files; the commit id."""
    hub.create_repo(repo, **options)  # type: ignore[arg-type]
    return hub.upload(repo, snapshot(folder))


def bank(wb: Cli, ref: str) -> dict:
    return json.loads(wb("show", ref, "--json").stdout)["manifest"]


def objects(store: Path) -> set[str]:
    return {path.name for path in (store / "objects").rglob("*") if path.is_file()}


def data_starts(folder: Path) -> dict[str, int]:
    """Where the data section of each safetensors file in the folder starts (after its header)."""
    return {
        path.name: 8 + struct.unpack("<Q", path.read_bytes()[:8])[0] for path in sorted(folder.glob("*.safetensors"))
    }


def tensor_reads(hub: HubDouble, repo: str, since: int, folder: Path) -> dict[str, int]:
    """Bytes of tensor data (beyond each header) read from the repo's weight files since `since`."""
    starts = data_starts(folder)
    read: dict[str, int] = {}
    for r in hub.reads_of(repo, since):
        if r.path in starts and r.end > starts[r.path]:
            read[r.path] = read.get(r.path, 0) + r.end - max(r.start, starts[r.path])
    return read


@pytest.fixture(scope="module")
def sharded(tiny_folders) -> Path:
    """A tiny Llama in four shards, with a shard index."""
    return tiny_folders("llama", max_shard_size="100KB")


def test_a_sharded_model_and_an_adapter_from_the_hub_equal_a_local_ingest(
    hub: HubDouble, sharded: Path, tmp_path: Path
) -> None:
    lora = make_lora(sharded, tmp_path / "lora", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    commit = publish_folder(hub, "team/tiny-sharded", sharded)
    publish_folder(hub, "team/tiny-lora", lora)
    remote, local = Cli(tmp_path / "from-hub"), Cli(tmp_path / "local")
    remote("ingest", f"hf://team/tiny-sharded@{commit}", "--name", "m")
    remote("ingest", "hf://team/tiny-lora@main", "--name", "lo", "--base", "m")
    local("ingest", sharded, "--name", "m")
    local("ingest", lora, "--name", "lo", "--base", "m")

    for ref in ("m", "lo"):
        ours, theirs = bank(remote, ref), bank(local, ref)
        for key in ("type", "tensors", "files", "config", "peft_config", "metadata", "safetensors_metadata"):
            assert ours.get(key) == theirs.get(key), key
    assert objects(remote.store) == objects(local.store)
    assert len(bank(remote, "m")["metadata"]["source_shards"]) == 4
    made = bank(remote, "m")["provenance"]["activity"]["parameters"]
    assert (made["repo"], made["revision"], made["url"]) == (
        "team/tiny-sharded",
        commit,
        f"hf://team/tiny-sharded@{commit}",
    )
    adapter_made = bank(remote, "lo")["provenance"]["activity"]["parameters"]
    assert adapter_made["revision"] == hub.repos[("model", "team/tiny-lora")].head

    remote("export", "m", tmp_path / "out")  # the source's own shards, byte for byte
    assert snapshot(tmp_path / "out") == {p: d for p, d in snapshot(sharded).items() if p != "README.md"}


def test_tensors_that_span_many_range_reads_arrive_whole(
    hub: HubDouble, sharded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(range_reads, "PART_BYTES", 4099)  # every tensor but the norms spans several reads
    publish_folder(hub, "team/in-pieces", sharded)
    remote, local = Cli(tmp_path / "from-hub"), Cli(tmp_path / "local")
    remote("ingest", "hf://team/in-pieces", "--name", "m")
    local("ingest", sharded, "--name", "m")
    assert bank(remote, "m")["tensors"] == bank(local, "m")["tensors"]
    reads = [r for r in hub.reads_of("team/in-pieces") if r.path.endswith(".safetensors") and r.end - r.start > 8]
    assert max(r.end - r.start for r in reads) == 4099 and len(reads) > 80


def test_a_second_ingest_reads_no_tensor_bytes_and_a_fine_tune_only_its_new_shard(
    hub: HubDouble, sharded: Path, tmp_path: Path
) -> None:
    publish_folder(hub, "team/base-again", sharded)
    wb = Cli(tmp_path / "store")
    first = len(hub.reads)
    wb("ingest", "hf://team/base-again", "--name", "m")
    data = {name: (sharded / name).stat().st_size - start for name, start in data_starts(sharded).items()}
    assert tensor_reads(hub, "team/base-again", first, sharded) == data  # every tensor byte, once

    second = len(hub.reads)
    again = json.loads(wb("ingest", "hf://team/base-again", "--name", "m", "--json").stdout)
    assert again["unchanged"] and tensor_reads(hub, "team/base-again", second, sharded) == {}
    assert {r.path for r in hub.reads_of("team/base-again", second)} >= set(data_starts(sharded))  # headers only

    tuned = tmp_path / "tuned"
    shutil.copytree(sharded, tuned)
    shard = tuned / "model-00002-of-00004.safetensors"
    tensors = load_file(shard)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, shard, metadata={"format": "pt"})
    publish_folder(hub, "team/tuned", tuned)
    third = len(hub.reads)
    wb("ingest", "hf://team/tuned", "--name", "tuned")
    assert set(tensor_reads(hub, "team/tuned", third, tuned)) == {shard.name}
    assert bank(wb, "tuned")["tensors"][name] != bank(wb, "m")["tensors"][name]
    rehashed = len(hub.reads)
    wb("ingest", "hf://team/tuned", "--name", "tuned", "--rehash")
    assert len(tensor_reads(hub, "team/tuned", rehashed, tuned)) == 4


def test_bytes_that_do_not_hash_to_the_hubs_sha256_are_refused(hub: HubDouble, sharded: Path, tmp_path: Path) -> None:
    publish_folder(hub, "team/rotten", sharded)
    hub.corrupt("team/rotten", "model-00003-of-00004.safetensors")
    wb = Cli(tmp_path / "store")
    wb("ingest", sharded, "--name", "existing")
    before = snapshot(wb.store)
    result = wb("ingest", "hf://team/rotten", "--name", "m", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "model-00003-of-00004.safetensors: its bytes hash to sha256" in result.stderr
    assert snapshot(wb.store) == before


def _pickle_only(folder: Path) -> dict[str, bytes]:
    files = {name: data for name, data in snapshot(folder).items() if ".safetensors" not in name}
    return {**files, "pytorch_model.bin": b"\x80\x04not loaded"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("hf://team/no-such-model", "error: no Hub repo hf://team/no-such-model, or no access to it (log in with"),
        ("hf://team/bad-input@no-such-branch", "error: hf://team/bad-input has no revision 'no-such-branch'"),
        ("hf://team/bad-input/no-such-folder", "error: hf://team/bad-input/no-such-folder: no such folder in the repo"),
        ("hf://team/someone-elses", "error: no Hub repo hf://team/someone-elses, or no access to it"),
        ("hf://team/pickled", "weights are only in pickle files (pytorch_model.bin); weightbank never loads pickle"),
        ("hf://team", "error: invalid Hub URL 'hf://team': "),
    ],
)
def test_bad_hub_input_is_one_line_and_the_store_is_unchanged(
    hub: HubDouble, sharded: Path, tmp_path: Path, url: str, expected: str
) -> None:
    if ("model", "team/bad-input") not in hub.repos:
        publish_folder(hub, "team/bad-input", sharded)
        publish_folder(hub, "team/someone-elses", sharded, private=True, owner="hf_someone_else")
        hub.create_repo("team/pickled")
        hub.upload("team/pickled", _pickle_only(sharded))
    wb = Cli(tmp_path / "store")
    wb("ingest", sharded, "--name", "existing")
    before = snapshot(wb.store)
    result = wb("ingest", url, "--name", "m", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr, result.stderr
    assert snapshot(wb.store) == before
    assert Store(wb.store).refs.names() == ["existing"]
