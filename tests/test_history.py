"""Ref histories as users drive them: rm and purge, retention, bank types kept across
versions, no-op rollbacks, provenance that is safe to share, pull repairing local damage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from weightbank.registry import Registry, Store, provenance

from helpers import Cli, make_lora, snapshot


def _log(wb: Cli, name: str) -> list[dict]:
    return json.loads(wb("log", name, "--json", "--reverse").stdout)  # oldest first


def _own_objects(store: Store, ref: str, other: str) -> set[str]:
    """Objects `ref` names that `other` does not."""
    return store.bank(ref).object_digests() - store.bank(other).object_digests()


def test_rm_appends_a_tombstone_and_gc_collects_after_the_grace_period(tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("ingest", tiny_folders("llama", seed=1), "--name", "tiny")
    store = Store(wb.store)
    only_v1 = _own_objects(store, "tiny@v1", "tiny@v2")
    assert only_v1

    assert wb("rm", "tiny@v1").stdout.startswith("removed tiny@v1 (tiny@v3)")
    entries = _log(wb, "tiny")
    assert [(e["version"], e["action"], e["removes"]) for e in entries] == [
        (1, "ingest", []),
        (2, "ingest", []),
        (3, "rm", [1]),
    ]
    refused = wb("show", "tiny@v1", ok=False)
    assert refused.exit_code == 1 and refused.stderr.startswith("error: tiny@v1 was removed by tiny@v3")
    assert store.resolve("tiny") == store.resolve("tiny@v2")

    assert json.loads(wb("gc", "--json").stdout)["objects"] == []  # the tombstone is younger than 1h
    assert all(store.objects.has(d) for d in only_v1)
    collected = json.loads(wb("gc", "--grace", "0", "--json").stdout)
    assert set(collected["objects"]) == only_v1
    assert wb("fsck").exit_code == 0 and wb("audit", "tiny").exit_code == 0

    wb("rm", "tiny", "-m", "retired")
    gone = wb("show", "tiny", ok=False)
    assert "tiny was removed (tiny@v4: rm by" in gone.stderr and gone.stderr.count("\n") == 1
    assert wb("refs", "--json").stdout.strip() == "[]"
    assert json.loads(wb("ingest", tiny_folders("llama"), "--name", "tiny", "--json").stdout)["version"] == 5
    assert store.resolve("tiny") == store.resolve("tiny@v5")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["rm", "nothing"], "no ref named 'nothing'"),
        (["rm", "tiny@v7"], "ref tiny@v7 does not exist"),
        (["rm", "blake3:0123456789abcdef"], "rm takes a ref name"),
        (["rm", "tiny@v1", "--purge"], "--purge removes a whole ref"),
        (["gc", "--grace", "soon"], "invalid duration 'soon'"),
        (["gc", "--ref", "tiny"], "--ref selects refs for --keep-last"),
        (["gc", "--keep-last", "1", "--ref", "nothing"], "no ref named 'nothing'"),
    ],
)
def test_rm_and_gc_refuse_bad_input_in_one_line(tiny_folders, wb: Cli, args: list[str], message: str) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    before = snapshot(wb.store)
    result = wb(*args, ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert snapshot(wb.store) == before


def test_removed_versions_cannot_be_removed_again_or_rolled_back_to(tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("ingest", tiny_folders("llama", seed=1), "--name", "tiny")
    wb("rm", "tiny@v1")
    for args in (["rm", "tiny@v1"], ["rollback", "tiny", "--to", "1"], ["rm", "tiny@v3"]):
        result = wb(*args, ok=False)
        assert result.exit_code == 1 and (
            "was removed by tiny@v3" in result.stderr or "removal record" in result.stderr
        )


def test_purge_deletes_the_history_and_frees_the_name(tiny_folders, wb: Cli, store_dir: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("ingest", tiny_folders("qwen2"), "--name", "other")
    wb("rm", "tiny", "--purge")
    report = json.loads(wb("gc", "--grace", "0", "--json").stdout)
    assert report["purged"] == ["tiny"] and report["objects"]
    assert not (store_dir / "refs" / "tiny").exists()
    assert "no ref named 'tiny'" in wb("log", "tiny", ok=False).stderr
    assert json.loads(wb("ingest", tiny_folders("llama"), "--name", "tiny", "--json").stdout)["version"] == 1
    assert wb("fsck").exit_code == 0


def test_gc_keep_last_thins_old_versions_with_tombstones(tiny_folders, wb: Cli) -> None:
    for seed in range(3):
        wb("ingest", tiny_folders("llama", seed=seed), "--name", "ckpt")
    wb("ingest", tiny_folders("qwen2"), "--name", "other")
    store = Store(wb.store)
    old = (_own_objects(store, "ckpt@v1", "ckpt@v3") | _own_objects(store, "ckpt@v2", "ckpt@v3")) - store.bank(
        "other"
    ).object_digests()  # same seed, same shapes: some tensors are shared with `other`

    dry = json.loads(wb("gc", "--keep-last", "1", "--dry-run", "--json").stdout)
    assert dry["thinned"] == ["ckpt@v1", "ckpt@v2"] and len(_log(wb, "ckpt")) == 3

    report = json.loads(wb("gc", "--keep-last", "1", "--ref", "ckpt", "--grace", "0", "--json").stdout)
    assert report["thinned"] == ["ckpt@v1", "ckpt@v2"]
    assert _log(wb, "ckpt")[-1]["removes"] == [1, 2] and _log(wb, "ckpt")[-1]["message"] == "gc --keep-last 1"
    assert old and not any(store.objects.has(d) for d in old)
    assert len(_log(wb, "other")) == 1 and wb("audit", "ckpt").exit_code == 0


def test_gc_grace_takes_durations(tiny_folders, wb: Cli, store_dir: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("rm", "tiny")
    for grace in ("2d", "90m", "1w", "3600"):
        assert json.loads(wb("gc", "--grace", grace, "--json").stdout)["objects"] == []
    assert json.loads(wb("gc", "--grace", "0s", "--json").stdout)["objects"]


def test_a_new_version_keeps_the_bank_type(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    base = tiny_folders("llama")
    wb("ingest", base, "--name", "tiny")
    lora = make_lora(base, tmp_path / "lora", r=2, target_modules=["q_proj"])
    before = snapshot(wb.store)
    refused = wb("ingest", lora, "--name", "tiny", "--base", "tiny", ok=False)
    assert refused.exit_code == 1 and refused.stderr.count("\n") == 1
    assert "tiny holds base banks (tiny@v1 is a base); refusing to record an adapter" in refused.stderr
    assert "--force-type" in refused.stderr
    assert snapshot(wb.store) == before
    forced = json.loads(wb("ingest", lora, "--name", "tiny", "--base", "tiny@v1", "--force-type", "--json").stdout)
    assert (forced["version"], forced["bank_type"]) == (2, "adapter")


def test_a_rollback_to_where_the_head_points_appends_nothing(tiny_folders, wb: Cli) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "tiny")
    wb("ingest", tiny_folders("llama", seed=1), "--name", "tiny")
    assert wb("rollback", "tiny", "--to", "1").stdout.startswith("tiny@v3 -> ")
    again = wb("rollback", "tiny", "--to", "1")
    assert again.stdout == "tiny@v3 already points where v1 does; nothing appended\n"
    assert len(_log(wb, "tiny")) == 3
    assert json.loads(wb("rollback", "tiny", "--to", "3", "--json").stdout)["appended"] is False


def test_provenance_carries_no_paths_or_host_names(tiny_folders, wb: Cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WEIGHTBANK_AGENT", raising=False)
    gitconfig = tmp_path / "gitconfig"
    gitconfig.write_text("[user]\n\temail = ada@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    provenance._git_email.cache_clear()
    try:
        wb("ingest", tiny_folders("llama"), "--name", "tiny")
        activity = Store(wb.store).bank("tiny").activity
        assert activity["parameters"]["source"] == tiny_folders("llama").name  # the folder's name only
        assert activity["agent"] == "ada@example.org" == _log(wb, "tiny")[0]["agent"]
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
        provenance._git_email.cache_clear()
        assert "@" not in provenance.current_agent()
        monkeypatch.setenv("WEIGHTBANK_AGENT", "ci-bot")
        assert provenance.current_agent() == "ci-bot"
    finally:
        provenance._git_email.cache_clear()


def test_pull_and_fsck_repair_replace_damaged_local_objects(tiny_folders, tmp_path: Path) -> None:
    a, b = Cli(tmp_path / "a"), Cli(tmp_path / "b")
    a("ingest", tiny_folders("llama"), "--name", "tiny")
    a("push", f"file://{tmp_path / 'remote'}", "tiny")
    b("remote", "add", "origin", f"file://{tmp_path / 'remote'}")
    b("pull", "origin", "tiny")
    store = Store(b.store)
    victims = sorted(store.bank("tiny").object_digests())[:2]
    for digest in victims:
        path = Path(str(store.objects.local_path(digest)))
        os.chmod(path, 0o644)
        path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    assert b("fsck", ok=False).exit_code == 1

    pulled = b("pull", "origin", "tiny", "--json")
    assert sorted(json.loads(pulled.stdout)["repaired"]) == victims
    assert b("fsck").exit_code == 0

    (Path(str(store.objects.local_path(victims[0])))).unlink()
    repaired = b("fsck", "--repair", "origin")
    assert repaired.exit_code == 0 and f"repaired object {victims[0]} from origin" in repaired.stderr
    assert Registry(b.store).audit("tiny").ok


def test_the_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    from helpers import run_cli

    home, scratch = tmp_path / "home", tmp_path / "scratch"
    scratch.mkdir()
    result = run_cli("demo", env={"WEIGHTBANK_HOME": str(home), "TMPDIR": str(scratch)})
    out = result.stdout
    assert "demo-llama@v1" in out and "demo-llama@v2 (1 new object" in out
    assert "same as v1: True" in out
    assert "logits max-abs diff vs the original: 0.0" in out
    assert "registered demo-merged@v1" in out
    assert "verify against PEFT's merge_and_unload: max-abs logits diff 0 (ok)" in out
    assert "├── adapter:" in out or "└── adapter:" in out
    assert "alpha cosine 0→1 over 1000 steps at 400 = 0.3455" in out
    folded = out.split("logits max-abs diff vs attached ")[1]
    assert float(folded.split()[0]) <= 1e-5 and "verify the fold against the attached seed" in out
    assert "(ok)" in out.split("verify the fold against the attached seed")[1].splitlines()[0]
    assert "verify grown vs original: max-abs logits diff" in out and "(ok)" in out.split("grown vs original")[1]
    assert "no tensors stored" in out and "audit: ok" in out
    assert "removed the demo's temporary store and folders" in out
    assert not home.exists() and list(scratch.iterdir()) == []
