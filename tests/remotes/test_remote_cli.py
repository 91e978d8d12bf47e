"""`remote add|ls|rm`, and what push and pull say when given something wrong: one line, exit 1,
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import Cli, run_cli, snapshot


def test_remote_add_ls_rm(tmp_path: Path, wb: Cli) -> None:
    wb("remote", "add", "folder", f"file://{tmp_path}/sub/../shared/")
    wb("remote", "add", "bucket", "s3://my-bucket/teams/llm/")
    added = json.loads(wb("remote", "add", "hub", "hf://org/banks?type=dataset", "--json").stdout)
    assert added == {"name": "hub", "url": "hf://datasets/org/banks", "lazy": False}
    listed = json.loads(wb("remote", "ls", "--json").stdout)
    assert [(r["name"], r["url"]) for r in listed] == [
        ("bucket", "s3://my-bucket/teams/llm"),
        ("folder", f"file://{tmp_path}/shared"),
        ("hub", "hf://datasets/org/banks"),
    ]
    assert wb("remote", "rm", "bucket").stdout == "removed remote bucket s3://my-bucket/teams/llm\n"
    assert [r["name"] for r in json.loads(wb("remote", "ls", "--json").stdout)] == ["folder", "hub"]
    assert json.loads((wb.store / "remotes.json").read_text())["remotes"]["hub"]["url"] == "hf://datasets/org/banks"


def test_a_plain_path_is_a_folder_remote(tmp_path: Path, wb: Cli, tiny_folders) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "m")
    added = json.loads(wb("remote", "add", "shared", str(tmp_path / "sub" / ".." / "shared"), "--json").stdout)
    assert added["url"] == f"file://{tmp_path / 'shared'}"
    pushed = json.loads(wb("push", str(tmp_path / "elsewhere"), "m", "--json").stdout)
    assert pushed["refs"] == ["m@v1"] and (tmp_path / "elsewhere" / "refs" / "m").is_dir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["remote", "add", "x", "ftp://host/path"], "unsupported remote URL 'ftp://host/path'"),
        (["remote", "add", "x", "s3://Bad_Bucket/p"], "invalid S3 remote URL"),
        (["remote", "add", "x", "hf://just-a-name"], "invalid Hub remote URL"),
        (["remote", "add", "x", "hf://org/repo?type=space"], "the only query is ?type=model or ?type=dataset"),
        (["remote", "add", "../x", "s3://bucket/p"], "invalid remote name '../x'"),
        (["remote", "add", "origin", "s3://bucket/other"], "remote 'origin' already exists (s3://bucket/p)"),
        (["remote", "rm", "nobody"], "no remote named 'nobody'"),
        (["push", "nobody", "m"], "no remote named 'nobody'"),
        (["push", "origin", "missing"], "no ref missing in"),
        (["pull", "s3://bucket/p", "m", "--lazy"], "pull --lazy needs a named remote"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    store = tmp_path / "store"
    run_cli("--store", str(store), "remote", "add", "origin", "s3://bucket/p")
    before = snapshot(store)
    result = run_cli("--store", str(store), *args, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert snapshot(store) == before


def test_a_missing_hub_repo_is_one_line(hub, tmp_path: Path) -> None:
    result = run_cli("--store", str(tmp_path / "store"), "pull", "hf://team/no-such-repo", "m", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "no Hub repo hf://team/no-such-repo" in result.stderr


def test_a_missing_bucket_is_one_line(s3_endpoint, tiny_folders, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    run_cli("--store", store, "ingest", str(tiny_folders("llama")), "--name", "m")
    result = run_cli("--store", store, "push", "s3://no-such-bucket/p", "m", check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr == "error: push to s3://no-such-bucket/p failed: The specified bucket does not exist\n"
