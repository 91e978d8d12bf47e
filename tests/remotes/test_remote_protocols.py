"""The protocols under the guarantees: S3 create-only puts, Hub commits with parent_commit and
their failure modes, and a push killed half-way that resumes without sending anything twice."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import s3fs

from weightbank.registry import ConflictError, RefEntry, Store
from weightbank.registry.gc import collect_garbage
from weightbank.registry.refs import entry_path
from weightbank.registry.remotes.urls import open_remote

from helpers import Cli

TARGETS = ("blake3:" + "a" * 64, "blake3:" + "b" * 64)


def _entry(target: str, version: int = 1) -> RefEntry:
    return RefEntry("m", version, target, "ingest", "2026-01-01T00:00:00Z", "tester")


def test_the_s3_server_rejects_a_second_create_only_put(s3_remote) -> None:
    fs = s3fs.S3FileSystem()
    path = f"{s3_remote.where}/probe/v00000001"
    with fs.open(path, "xb") as first:
        first.write(b"first")
    with pytest.raises(FileExistsError), fs.open(path, "xb") as second:
        second.write(b"second")
    assert fs.cat_file(path) == b"first"


def test_a_ref_version_is_created_once_on_every_remote(remote) -> None:
    store = open_remote(remote.url)
    store.refs.append(_entry(TARGETS[0]))
    with pytest.raises(ConflictError, match="v1 already exists"):
        store.refs.append(_entry(TARGETS[1]))
    assert store.refs.get("m", 1).target == TARGETS[0]


def test_hub_create_only_commit_loses_to_a_rival_commit_after_its_check(hub_remote) -> None:
    double, repo = hub_remote.where
    store = open_remote(hub_remote.url)
    rival = json.dumps(_entry(TARGETS[1]).to_document()).encode()
    double.before_next_commit(lambda: double.commit_files(repo, {entry_path("m", 1): rival}))
    with pytest.raises(ConflictError, match="v1 already exists"):
        store.refs.append(_entry(TARGETS[0]))  # checked absent, then 412, re-read: taken
    assert double.files(repo)[entry_path("m", 1)] == rival


def test_hub_commit_retried_on_top_of_an_unrelated_rival_commit(hub_remote) -> None:
    double, repo = hub_remote.where
    store = open_remote(hub_remote.url)
    double.before_next_commit(lambda: double.commit_files(repo, {"refs/other/v00000001": b"{}"}))
    store.refs.append(_entry(TARGETS[0]))
    assert store.refs.get("m", 1).target == TARGETS[0]


@pytest.mark.parametrize(("status", "landed"), [(500, True), (503, False), (429, False)])
def test_hub_push_survives_a_failed_commit_answer(hub_remote, tiny_folders, tmp_path, status, landed) -> None:
    double, _repo = hub_remote.where
    wb = Cli(tmp_path / "a")
    wb("ingest", tiny_folders("llama"), "--name", "m")
    double.fail_commits(status, after_applying=landed)
    commits = double.commits
    result = json.loads(wb("push", hub_remote.url, "m", "--json").stdout)
    assert result["refs"] == ["m@v1"]
    assert double.commits - commits == 2  # the data commit and the ref commit, each once
    assert hub_remote.objects() == set(Store(tmp_path / "a").objects)


def test_hub_dataset_repos_and_paged_listings(hub, tiny_folders, tmp_path) -> None:
    hub.create_repo("team/bank-data", repo_type="dataset")
    wb = Cli(tmp_path / "a")
    wb("ingest", tiny_folders("llama"), "--name", "m")
    wb("remote", "add", "data", "hf://team/bank-data?type=dataset")
    assert "hf://datasets/team/bank-data" in wb("remote", "ls").stdout
    wb("push", "data", "m")
    stored = {path for path in hub.files("team/bank-data", repo_type="dataset") if path.startswith("objects/")}
    assert len(stored) > hub.page_size  # so the listing below spans several pages
    assert set(open_remote("hf://datasets/team/bank-data").objects) == set(Store(tmp_path / "a").objects)


def test_gc_on_a_hub_store_removes_only_unreachable_old_objects(hub_remote, tiny_folders, tmp_path) -> None:
    wb = Cli(tmp_path / "a")
    wb("ingest", tiny_folders("llama"), "--name", "m")
    wb("push", hub_remote.url, "m")
    store = open_remote(hub_remote.url)
    stray = store.objects.put(b"nothing names this").digest
    report = collect_garbage(store, grace_seconds=0)
    assert report.objects == [stray]
    assert hub_remote.objects() == set(Store(tmp_path / "a").objects)


def test_an_interrupted_push_resumes_and_sends_nothing_twice(s3_remote, tiny_folders, tmp_path) -> None:
    wb = Cli(tmp_path / "a")
    wb("ingest", tiny_folders("llama", num_hidden_layers=16), "--name", "big")
    total = len(set(Store(tmp_path / "a").objects))
    command = [sys.executable, "-m", "weightbank", "--store", str(tmp_path / "a"), "push", s3_remote.url, "big"]
    child = subprocess.Popen([*command, "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(s3_remote.objects()) < 10 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    child.kill()
    assert child.wait() != 0, "the push finished before it could be interrupted"

    before = s3_remote.paths()
    assert 10 <= len(s3_remote.objects()) < total
    assert not any(path.startswith(("refs/", "manifests/")) for path in before)
    resumed = json.loads(wb("push", s3_remote.url, "big", "--json").stdout)
    assert resumed["objects"] == total - len([path for path in before if path.startswith("objects/")])
    assert resumed["refs"] == ["big@v1"] and len(s3_remote.objects()) == total


def test_existence_checks_on_s3_see_what_others_wrote_since(s3_remote) -> None:
    """s3fs remembers listings; a store must not: a writer elsewhere may have added a file."""
    import boto3

    store = open_remote(s3_remote.url)
    digest = "blake3:" + "c" * 64
    assert not store.objects.has(digest) and store.backend.list_dir("objects/cc") == []
    boto3.client("s3").put_object(Bucket=s3_remote.where, Key=f"banks/objects/cc/{'c' * 64}", Body=b"x")
    assert store.objects.has(digest) and store.backend.list_dir("objects/cc") == ["c" * 64]
    boto3.client("s3").delete_object(Bucket=s3_remote.where, Key=f"banks/objects/cc/{'c' * 64}")
    assert not store.objects.has(digest)
