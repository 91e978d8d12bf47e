"""The CLI as users run it: subprocesses, JSON output, one-line errors, the demo."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import Cli, run_cli


def test_every_read_command_speaks_json(tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "m")
    outputs = {
        "show": wb("show", "m", "--json"),
        "log": wb("log", "m", "--json", "--reverse"),
        "refs": wb("refs", "--json"),
        "lineage": wb("lineage", "m", "--json"),
        "audit": wb("audit", "m", "--json"),
        "fsck": wb("fsck", "--json"),
        "gc": wb("gc", "--dry-run", "--json"),
    }
    parsed = {name: json.loads(result.stdout) for name, result in outputs.items()}
    assert parsed["show"]["manifest"]["type"] == "base"
    assert parsed["log"][0]["version"] == 1
    assert parsed["refs"][0]["name"] == "m"
    assert parsed["lineage"]["root"] == parsed["show"]["digest"]
    assert parsed["audit"]["ok"] and parsed["fsck"]["ok"]
    assert parsed["gc"]["dry_run"] is True


def test_show_text_summarises_the_bank(tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders("gpt2"), "--name", "g", "-m", "hello")
    text = wb("show", "g").stdout
    assert "tensors" in text and "parameters" in text and "config.json" in text and "message     hello" in text


def test_subprocess_errors_are_one_line(tmp_path: Path, tiny_folders) -> None:
    store = str(tmp_path / "store")
    no_store = run_cli("--store", store, "log", "nobody", check=False)
    assert no_store.returncode == 1 and no_store.stderr.startswith(f"error: no store at {store}: ")
    (tmp_path / "store").mkdir()
    missing = run_cli("--store", store, "log", "nobody", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "error: no ref named 'nobody'\n"
    usage = run_cli("--store", store, "rollback", "x", check=False)
    assert usage.returncode == 2 and "Missing option '--to'" in usage.stderr
    ok = run_cli("--store", store, "ingest", str(tiny_folders("llama")), "--name", "m")
    assert ok.stdout.startswith("ingested m@v1 blake3:") and ok.stderr == ""  # no progress bar off a TTY


def test_store_from_environment(tmp_path: Path, tiny_folders) -> None:
    env = {"WEIGHTBANK_HOME": str(tmp_path / "home-store"), "WEIGHTBANK_AGENT": "ci-bot"}
    run_cli("ingest", str(tiny_folders("llama")), "--name", "env", env=env)
    assert (tmp_path / "home-store" / "refs" / "env").is_dir()
    log = json.loads(run_cli("log", "env", "--json", env=env).stdout)
    assert log[0]["agent"] == "ci-bot"


def test_demo_keeps_the_store_and_folders_it_is_given(tmp_path: Path) -> None:
    result = run_cli("--store", str(tmp_path / "store"), "demo", "--workdir", str(tmp_path / "work"))
    assert "audit: ok" in result.stdout and "removed the demo's" not in result.stdout
    refs = json.loads(run_cli("--store", str(tmp_path / "store"), "refs", "--json").stdout)
    assert {r["name"] for r in refs} >= {"demo-llama", "demo-lora", "demo-merged", "demo-grown"}
    assert (tmp_path / "work" / "exported" / "config.json").is_file()
