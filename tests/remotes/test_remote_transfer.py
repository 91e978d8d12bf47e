"""Push and pull against a folder, S3 (moto on loopback) and the Hub (the double): the same
behaviour everywhere. Only missing blobs move, every byte is verified on arrival, refs are
compare-and-swap, and a lazy pull fetches only what a composition reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

import weightbank.composer
from weightbank.registry import Store

from helpers import Cli, snapshot


def _stores(tmp_path: Path, remote_url: str, *names: str) -> list[Cli]:
    """Local stores (as CLIs), each with the remote added as `origin`."""
    clis = [Cli(tmp_path / name) for name in names]
    for wb in clis:
        wb("remote", "add", "origin", remote_url)
    return clis


def _start(*args: str) -> subprocess.Popen[str]:
    """`weightbank ARGS` in a child process."""
    command = [sys.executable, "-m", "weightbank", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _json(result: object) -> dict:
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def _own_bytes(store: Store, ref: str) -> int:
    """A bank's own objects and manifest, in bytes."""
    bank = store.bank(ref)
    return sum(store.objects.size(d) for d in bank.object_digests()) + len(store.manifests.read_bytes(bank.digest))


def test_push_sends_only_what_is_missing_and_pull_restores_everything(remote, tiny_folders, lora_folder, tmp_path):
    a, b = _stores(tmp_path, remote.url, "a", "b")
    a("ingest", tiny_folders("llama"), "--name", "base")
    a("ingest", lora_folder(seed=1), "--name", "lora", "--base", "base")
    local = Store(a.store)

    base = _json(a("push", "origin", "base", "--json"))
    assert base["objects"] == len(local.bank("base").object_digests()) and base["refs"] == ["base@v1"]
    assert remote.objects() == local.bank("base").object_digests()

    received = remote.bytes_received()
    adapter = _json(a("push", "origin", "lora", "--json"))
    own = _own_bytes(local, "lora")
    assert adapter["objects"] == len(local.bank("lora").object_digests()) and adapter["refs"] == ["lora@v1"]
    assert own <= adapter["bytes"] <= 1.01 * own, (adapter, own)
    if received is not None:  # the Hub double counts what arrived over HTTP
        assert own <= remote.bytes_received() - received <= 1.01 * own

    again = _json(a("push", "origin", "base", "lora", "--json"))
    assert (again["objects"], again["object_bytes"], again["manifests"], again["refs"]) == (0, 0, 0, [])

    pulled = _json(b("pull", "origin", "lora", "--json"))
    assert pulled["objects"] == len(set(local.objects)) and pulled["refs"] == ["lora@v1"]
    assert _json(b("fsck", "--json"))["ok"]
    copy = Store(b.store)
    assert set(copy.objects) == set(local.objects) and set(copy.manifests) == set(local.manifests)
    assert copy.resolve("lora") == local.resolve("lora")
    assert _json(b("pull", "origin", "lora", "--json"))["objects"] == 0


def test_concurrent_pushes_one_wins_the_other_loses_nothing(remote, tiny_folders, tmp_path):
    a, b, c = _stores(tmp_path, remote.url, "a", "b", "c")
    a("ingest", tiny_folders("llama"), "--name", "shared")
    a("push", "origin", "shared")
    b("pull", "origin", "shared")
    a("ingest", tiny_folders("llama", seed=1), "--name", "shared")
    b("ingest", tiny_folders("llama", seed=2), "--name", "shared")
    targets = {Store(wb.store).resolve("shared@v2") for wb in (a, b)}

    pushes = [_start("--store", str(wb.store), "push", "origin", "shared") for wb in (a, b)]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in pushes]
    assert sorted(code for code, _, _ in outcomes) == [0, 1], outcomes
    loser = a if outcomes[0][0] else b
    error = next(err for code, _, err in outcomes if code)
    assert error.count("\n") == 1 and "different v2 of shared: pull, then push again" in error, error

    own = Store(loser.store).resolve("shared@v2")
    refused = loser("pull", "origin", "shared", ok=False)
    assert refused.exit_code == 1 and "shared@v2 differs here" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "--as NEW" in refused.stderr
    imported = _json(loser("pull", "origin", "shared", "--as", "shared-origin", "--json"))
    assert imported["refs"] == ["shared-origin@v1", "shared-origin@v2"]
    assert Store(loser.store).resolve("shared@v2") == own  # a local version is never rewritten
    assert {Store(loser.store).resolve("shared-origin@v2"), own} == targets
    assert loser("fsck").exit_code == 0
    c("pull", "origin", "shared")
    assert Store(c.store).resolve("shared@v2") != own


def test_a_corrupt_remote_object_is_named_and_never_stored(remote, tiny_folders, tmp_path):
    a, b = _stores(tmp_path, remote.url, "a", "b")
    a("ingest", tiny_folders("llama"), "--name", "base")
    a("push", "origin", "base")
    victim = sorted(remote.objects())[3]
    remote.corrupt(f"objects/{victim[7:9]}/{victim[7:]}")

    failed = b("pull", "origin", "base", "--jobs", "1", ok=False)
    assert failed.exit_code == 1
    assert failed.stderr.count("\n") == 1 and f"object {victim} from" in failed.stderr and "corrupt" in failed.stderr
    files = snapshot(b.store)
    assert not any(victim[7:] in path or ".tmp-" in path for path in files), sorted(files)
    assert not any(path.startswith("refs/") for path in files)


def test_a_damaged_local_object_is_not_pushed(s3_remote, tiny_folders, tmp_path):
    (a,) = _stores(tmp_path, s3_remote.url, "a")
    a("ingest", tiny_folders("llama"), "--name", "base")
    victim = sorted(Store(a.store).objects)[0]
    path = a.store / "objects" / victim[7:9] / victim[7:]
    path.chmod(0o644)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    failed = a("push", "origin", "base", ok=False)
    assert failed.exit_code == 1 and f"object {victim} from {a.store} is corrupt" in failed.stderr
    assert victim not in s3_remote.objects() and not any(p.startswith("refs/") for p in s3_remote.paths())


def test_lazy_pull_then_compose_fetches_exactly_what_the_plan_reads(remote, tiny_folders, lora_folder, tmp_path):
    a, b = _stores(tmp_path, remote.url, "a", "b")
    a("ingest", tiny_folders("llama"), "--name", "base")
    a("ingest", lora_folder(seed=1), "--name", "used", "--base", "base")
    a("ingest", lora_folder(seed=2), "--name", "unused", "--base", "base")
    a("push", "origin", "base", "used", "unused")

    pulled = _json(b("pull", "origin", "base", "used", "unused", "--lazy", "--json"))
    assert pulled["lazy"] and pulled["objects"] == 0 and pulled["manifests"] == 3
    lazy = Store(b.store)
    assert not set(lazy.objects)
    assert "lazy" in b("remote", "ls").stdout

    spec = {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "used"}]}
    reads = set(weightbank.composer.plan(spec, store=lazy).reads())
    model, _ = weightbank.composer.compose(spec, store=lazy)
    assert set(lazy.objects) == reads
    assert not reads & Store(a.store).bank("unused").object_digests()
    expected, _ = weightbank.composer.compose(spec, store=Store(a.store))
    for name, tensor in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name

    weightbank.composer.compose(spec, store=lazy)
    assert set(lazy.objects) == reads


def test_rollback_on_a_remote_is_pull_rollback_push(remote, tiny_folders, tmp_path):
    a, b = _stores(tmp_path, remote.url, "a", "b")
    a("ingest", tiny_folders("llama"), "--name", "m")
    a("ingest", tiny_folders("llama", seed=3), "--name", "m")
    a("push", "origin", "m")
    b("pull", "origin", "m")
    b("rollback", "m", "--to", "1")
    assert _json(b("push", "origin", "m", "--json"))["refs"] == ["m@v3"]
    assert _json(a("pull", "origin", "m", "--json"))["refs"] == ["m@v3"]
    log = _json(a("log", "m", "--json", "--reverse"))
    assert log[2]["rollback_to"] == 1 and log[2]["target"] == log[0]["target"]


def test_a_lazy_store_composes_straight_into_a_new_bank(tiny_folders, lora_folder, tmp_path):
    """compose --name writes inside one batch of the store: objects fetched during it are read back at once."""
    a, b = _stores(tmp_path, f"file://{tmp_path / 'remote'}", "a", "b")
    a("ingest", tiny_folders("llama"), "--name", "base")
    a("ingest", lora_folder(seed=1), "--name", "lora", "--base", "base")
    a("push", "origin", "lora")
    b("pull", "origin", "lora", "--lazy")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"mes_version": "1", "base": Store(b.store).bank("lora").parents[0].digest,
                                "steps": [{"op": "adapter.lora", "bank": "lora"}]}))  # fmt: skip
    b("compose", str(spec), "--name", "merged")
    a("compose", str(spec), "--name", "merged")
    assert Store(b.store).bank("merged").tensors == Store(a.store).bank("merged").tensors
    assert _json(b("audit", "merged", "--json"))["ok"]
