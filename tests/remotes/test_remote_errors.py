"""Remote services failing as a user meets them: S3 without credentials and an unreachable
Hub are one line each; objects fetched on demand after `pull --lazy` show what arrives."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import boto3
import pytest
import s3fs
from click.testing import CliRunner

from weightbank.cli.main import cli
from weightbank.registry import Registry

from helpers import Cli, snapshot


def _no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups either
    s3fs.S3FileSystem.clear_instance_cache()


def test_s3_without_credentials_is_one_line(s3_endpoint: str, tiny_folders, tmp_path: Path, monkeypatch) -> None:
    boto3.client("s3").create_bucket(Bucket="wb-no-credentials")
    store = tmp_path / "store"
    wb = Cli(store)
    wb("ingest", tiny_folders("llama"), "--name", "m")
    _no_aws_credentials(monkeypatch, tmp_path)
    before = snapshot(store)
    expected = "error: S3: no AWS credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
    for args in (
        ["--store", "s3://wb-no-credentials/banks", "refs"],
        ["--store", str(store), "push", "s3://wb-no-credentials/banks", "m"],
        ["--store", str(store), "pull", "s3://wb-no-credentials/banks", "m"],
    ):
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 1 and result.stdout == "", args
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(expected), result.stderr
    assert snapshot(store) == before


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_hub_is_one_line(tiny_folders, tmp_path: Path, monkeypatch, capfd) -> None:
    """huggingface_hub retries five times (about 23 s, skipped here) and logs every retry; we print one line."""
    import huggingface_hub.utils._http as hub_http

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    monkeypatch.setattr(hub_http.time, "sleep", lambda _seconds: None)
    wb = Cli(tmp_path / "store")
    wb("ingest", tiny_folders("llama"), "--name", "m")
    capfd.readouterr()
    result = wb("push", "hf://team/unreachable", "m", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: hf://team/unreachable: ") and "Connect" in result.stderr
    assert "Retry" not in capfd.readouterr().err + result.stderr


def test_on_demand_fetches_show_what_arrives(tiny_folders, tmp_path: Path, monkeypatch) -> None:
    a, b = Cli(tmp_path / "a"), Cli(tmp_path / "b")
    for store in (a, b):
        store("remote", "add", "origin", f"file://{tmp_path / 'remote'}")
    a("ingest", tiny_folders("llama"), "--name", "m")
    a("push", "origin", "m")
    b("pull", "origin", "m", "--lazy")
    monkeypatch.setattr("weightbank.registry.progress.progress_wanted", lambda quiet: not quiet)  # a terminal
    quiet = b("-q", "audit", "m", "--json")
    assert quiet.stderr == ""  # -q: no bars, yet everything was fetched
    c = Cli(tmp_path / "c")
    c("remote", "add", "origin", f"file://{tmp_path / 'remote'}")
    c("pull", "origin", "m", "--lazy")
    shown = c("audit", "m").stderr
    fetched = set(re.findall(r"fetch (blake3:[0-9a-f]{12}) from origin", shown))
    objects = {digest[:19] for digest in Registry(tmp_path / "a").store.bank("m").object_digests()}
    assert fetched == objects  # every object, named as it arrives
    assert re.search(r"from origin: +0%\|.*\| [0-9.]+/[0-9.]+k ", shown)  # with its size in bytes (32.1k)
