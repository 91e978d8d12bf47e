"""`export REF hf://ORG/REPO` and `export REF s3://…`: a folder `from_pretrained` loads from where
it lands, with a model card and the bank's manifest, which a later ingest recognises."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import s3fs
import torch
from hub_server import HubDouble
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from weightbank.composer import compose
from weightbank.registry import Store

from helpers import Cli, make_lora, snapshot

TOKENS = torch.arange(3, 27).reshape(2, 12) % 128


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def test_a_composed_bank_published_to_the_hub_loads_with_from_pretrained(
    hub_loaders: HubDouble, tiny_folders, tmp_path: Path
) -> None:
    hub = hub_loaders
    base_folder = tiny_folders("llama")
    hub.create_repo("team/pub-base")
    hub.upload("team/pub-base", snapshot(base_folder))
    lora = make_lora(base_folder, tmp_path / "lora", 2, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wb = Cli(tmp_path / "store")
    wb("ingest", "hf://team/pub-base", "--name", "base")
    wb("ingest", lora, "--name", "lo", "--base", "base")
    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lo"}]}
    (tmp_path / "merge.json").write_text(json.dumps(spec))
    merged = json.loads(wb("compose", tmp_path / "merge.json", "--name", "merged", "--json").stdout)

    commits = hub.commits
    published = json.loads(wb("export", "merged", "hf://team/merged", "--create", "--json").stdout)
    assert hub.commits == commits + 1 and published["url"].startswith("hf://team/merged@")
    loaded = AutoModelForCausalLM.from_pretrained("team/merged")
    assert torch.equal(logits(loaded), logits(compose(spec, store=wb.store)[0]))

    card = ModelCard.load("team/merged")
    assert card.data.base_model == "team/pub-base" and card.data.library_name == "transformers"
    assert card.data.tags == ["weightbank", "base"] and card.data.weightbank["bank"] == merged["digest"]
    assert "```mermaid\ngraph BT\n" in card.text and "merged@v1" in card.text and "lo@v1" in card.text
    assert "## Composition" in card.text and "op: adapter.lora" in card.text
    assert set(hub.files("team/merged")) >= {"README.md", "weightbank.json", "config.json", "model.safetensors"}
    assert hub.files("team/merged")["weightbank.json"] == Store(wb.store).manifests.read_bytes(merged["digest"])

    since = len(hub.reads)
    back = json.loads(wb("ingest", "hf://team/merged", "--name", "back", "--json").stdout)
    assert back["digest"] == merged["digest"]  # recognised: the very bank, lineage and all
    starts = {
        path: 8 + struct.unpack("<Q", data[:8])[0]
        for path, data in hub.files("team/merged").items()
        if path.endswith(".safetensors")
    }
    assert [r for r in hub.reads_of("team/merged", since) if r.path in starts and r.end > starts[r.path]] == []


def test_an_adapter_published_to_a_branch_and_republished_in_one_commit(
    hub_loaders: HubDouble, tiny_folders, tmp_path: Path
) -> None:
    hub = hub_loaders
    base_folder = tiny_folders("llama")
    lora = make_lora(base_folder, tmp_path / "lora", 3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wb = Cli(tmp_path / "store")
    wb("ingest", base_folder, "--name", "base")
    wb("ingest", lora, "--name", "lo", "--base", "base")
    wb("export", "lo", "hf://team/lora-pub", "--create", "--revision", "dev")
    assert set(hub.files("team/lora-pub")) == {".gitattributes"}  # main is untouched
    base = AutoModelForCausalLM.from_pretrained(base_folder)
    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), lora))
    assert torch.equal(logits(PeftModel.from_pretrained(base, "team/lora-pub", revision="dev")), expected)
    assert ModelCard(hub.files("team/lora-pub", branch="dev")["README.md"].decode()).data.library_name == "peft"

    wb("ingest", tiny_folders("llama", max_shard_size="100KB"), "--name", "sharded")
    wb("export", "sharded", "hf://team/model-pub", "--create")
    assert len([p for p in hub.files("team/model-pub") if p.endswith(".safetensors")]) == 4
    commits = hub.commits
    wb("export", "sharded", "hf://team/model-pub", "--max-shard-size", "5GB")
    files = set(hub.files("team/model-pub"))
    assert hub.commits == commits + 1
    assert {p for p in files if "safetensors" in p} == {"model.safetensors"}  # the old shards went in that commit


def test_bad_publish_input_is_one_line_and_changes_nothing(hub: HubDouble, tiny_folders, tmp_path: Path) -> None:
    wb = Cli(tmp_path / "store")
    wb("ingest", tiny_folders("llama"), "--name", "m")
    wb("expand", "m", "--name", "x", "--depth", "3")
    hub.create_repo("team/public")
    hub.create_repo("team/theirs", private=True, owner="hf_someone_else")
    cases = [
        (("m", "hf://team/absent"), "error: no Hub repo hf://team/absent, or no write access to it (log in with"),
        (("m", "hf://team/public", "--private"), "hf://team/public is public; refusing to publish with --private"),
        (("m", "hf://team/theirs", "--create"), "error: no Hub repo hf://team/theirs, or no write access to it"),
        (("m", "hf://datasets/team/public"), "export publishes to model repos"),
        (("x", "hf://team/public"), "error: x is an expansion bank; export writes base and adapter banks"),
        (("m", str(tmp_path / "out"), "--revision", "dev"), "--revision, --private and --create apply to hf://"),
        (("m", "hf://team/public@v1", "--revision", "v2"), "names revision 'v1' but --revision says 'v2'"),
    ]
    before, repos = snapshot(wb.store), {repo: hub.files(repo) for repo in ("team/public", "team/theirs")}
    for args, expected in cases:
        result = wb("export", *args, ok=False)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, result.stderr
    assert ("model", "team/absent") not in hub.repos and not (tmp_path / "out").exists()
    assert {repo: hub.files(repo) for repo in repos} == repos

    hub.before_next_commit(lambda: hub.commit_files("team/public", {"notes.txt": b"a rival commit"}))
    raced = wb("export", "m", "hf://team/public", ok=False)
    assert "someone committed to main while this was published; nothing changed" in raced.stderr
    assert set(hub.files("team/public")) == {".gitattributes", "notes.txt"}
    assert snapshot(wb.store) == before


def test_s3_ingest_and_export_give_the_same_bank(s3_endpoint: str, tiny_folders, tmp_path: Path) -> None:
    import boto3

    boto3.client("s3").create_bucket(Bucket="models")
    s3fs.S3FileSystem.clear_instance_cache()
    folder = tiny_folders("llama", max_shard_size="100KB")
    s3fs.S3FileSystem().put(str(folder), "models/tiny", recursive=True)
    remote, local = Cli(tmp_path / "from-s3"), Cli(tmp_path / "local")
    first = json.loads(remote("ingest", "s3://models/tiny/", "--name", "m", "--json").stdout)
    local_first = json.loads(local("ingest", folder, "--name", "m", "--json").stdout)
    ours, theirs = (json.loads(cli("show", "m", "--json").stdout)["manifest"] for cli in (remote, local))
    for key in ("tensors", "files", "config", "metadata"):
        assert ours[key] == theirs[key], key
    assert ours["provenance"]["activity"]["parameters"]["url"] == "s3://models/tiny"
    assert first["new_objects"] == local_first["new_objects"]

    remote("export", "m", "s3://models/published")
    listed = {path.rpartition("/")[2] for path in s3fs.S3FileSystem().find("models/published")}
    assert listed == {*(p.name for p in folder.iterdir()), "README.md", "weightbank.json"}
    back = json.loads(remote("ingest", "s3://models/published", "--name", "back", "--json").stdout)
    assert back["digest"] == first["digest"]  # recognised: the very bank
    elsewhere = json.loads(local("ingest", "s3://models/published", "--name", "back", "--json").stdout)
    copy = json.loads(local("show", "back", "--json").stdout)["manifest"]
    assert elsewhere["digest"] != local_first["digest"] and copy["files"] == theirs["files"]  # no card, no manifest
    assert copy["tensors"] == theirs["tensors"]
    assert copy["provenance"]["activity"]["parameters"]["published_bank"] == first["digest"]

    before = snapshot(remote.store)
    again = remote("export", "m", "s3://models/published", ok=False)
    assert again.stderr.startswith("error: s3://models/published: already holds files; export writes only into")

    missing = remote("export", "m", "s3://no-such-bucket/x", ok=False)
    assert "there is no bucket 'no-such-bucket'" in missing.stderr and missing.stderr.count("\n") == 1
    assert snapshot(remote.store) == before


@pytest.mark.parametrize("url", ["s3://models/nothing-here", "nosuch://bucket/model"])
def test_a_bad_fsspec_source_is_one_line(s3_endpoint: str, tmp_path: Path, url: str) -> None:
    result = Cli(tmp_path / "store")("ingest", url, "--name", "m", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "store").exists() or not list((tmp_path / "store").rglob("refs/*"))


def test_publishing_keeps_the_trust_policy_and_says_what_signing_does_not_cover(
    hub: HubDouble, tiny_folders, tmp_path: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    private, public = keys["alice"]
    wb = Cli(tmp_path / "store")
    wb("ingest", tiny_folders("llama"), "--name", "signed")
    wb("ingest", tiny_folders("llama", seed=1), "--name", "unsigned")
    wb("sign", "signed", "--key", private)
    trusted = ("--require-signed", "--trusted-key", public)
    wb("export", "signed", "hf://team/signed-pub", "--create", *trusted)
    assert "weightbank.json" in hub.files("team/signed-pub")

    before = snapshot(wb.store)
    refused = [
        (("export", "unsigned", "hf://team/unsigned-pub", "--create", *trusted), "unsigned"),
        (("export", "signed", "hf://team/signed-pub", "--sign", private), "--sign writes model.sig into a local"),
        (("ingest", "hf://team/signed-pub", "--name", "back", *trusted), "verifies a local folder's model.sig"),
    ]
    for args, expected in refused:
        result = wb(*args, ok=False)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, result.stderr
    assert ("model", "team/unsigned-pub") not in hub.repos  # refused before the Hub was contacted
    assert snapshot(wb.store) == before
