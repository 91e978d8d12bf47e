"""What the store promises under crashes, races and damage (docs/reliability.md): kill -9 at
random moments, gc beside ingest, damaged hash caches and ref logs, stale temporaries, lying
manifests, and remotes that try to act as configuration."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path

import pytest

from weightbank.registry import Registry, Store
from weightbank.registry.digest import digest_bytes
from weightbank.registry.manifests import canonical_json, manifest_path
from weightbank.registry.refs import entry_path
from weightbank.registry.temporaries import TEMP_PREFIX

from crash_harness import KILL_KINDS, fresh_work, gc_race_trial, kill_trial, make_folders
from helpers import Cli, snapshot


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return make_folders(tmp_path_factory.mktemp("crash-models"))


@pytest.mark.parametrize("kind", KILL_KINDS)
def test_kill_9_at_a_random_moment_loses_nothing_and_a_rerun_finishes(kind, folders, tmp_path: Path) -> None:
    rng = random.Random(f"kill-{kind}")
    failures = kill_trial(kind, fresh_work(tmp_path, kind), folders, rng)
    assert failures == []


def test_gc_beside_an_ingest_that_reuses_its_objects_never_loses_data(folders, tmp_path: Path) -> None:
    rng = random.Random("race")
    for trial in range(3):
        assert gc_race_trial(fresh_work(tmp_path, f"race{trial}"), folders, rng) == []


def _tensors(registry: Registry, digest: str) -> dict:
    """What a bank holds, without its provenance (whose time is kept to the second)."""
    return registry.show(digest)["tensors"]


def test_a_damaged_hash_cache_row_is_never_trusted(tiny_folders, copy_folder, tmp_path: Path) -> None:
    source = copy_folder(tiny_folders("llama"))
    truth_registry = Registry(tmp_path / "truth")
    truth = _tensors(truth_registry, truth_registry.ingest(source, "m").digest)
    store = tmp_path / "store"
    registry = Registry(store)
    assert _tensors(registry, registry.ingest(source, "m").digest) == truth
    database = store / "state" / "hashes.sqlite"
    with sqlite3.connect(database) as db:
        (digests,) = db.execute("SELECT digests FROM safetensors_v2").fetchone()
        swapped = json.loads(digests)
        a, b = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.o_proj.weight"
        swapped[a], swapped[b] = swapped[b], swapped[a]  # same shape: only the bytes can tell
        db.execute("UPDATE safetensors_v2 SET digests = ?", (json.dumps(swapped, sort_keys=True),))
    registry.rm("m")
    assert _tensors(registry, registry.ingest(source, "m").digest) == truth


def test_a_corrupt_hash_cache_file_is_rebuilt(tiny_folders, tmp_path: Path) -> None:
    store = tmp_path / "store"
    registry = Registry(store)
    registry.ingest(tiny_folders("llama"), "m")
    (store / "state" / "hashes.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.warns(UserWarning, match="hash cache .* was damaged"):
        result = registry.ingest(tiny_folders("llama"), "again")
    assert _tensors(registry, result.digest) == _tensors(registry, registry.resolve("m"))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("retarget-v1", "v1 was rewritten"),
        ("delete-latest", "the head record names v3, which is missing"),
        ("delete-middle", "versions v2..v2 are missing (gap)"),
        ("retarget-latest", "v3 was rewritten: the head record names other bytes"),
    ],
)
def test_fsck_sees_every_kind_of_ref_log_damage(damage, problem, tiny_folders, wb: Cli, store_dir: Path) -> None:
    for seed in range(3):
        wb("ingest", tiny_folders("llama", seed=seed), "--name", "m")
    entries = {v: store_dir / entry_path("m", v) for v in (1, 2, 3)}
    if damage.startswith("retarget"):
        version = 1 if damage == "retarget-v1" else 3
        document = json.loads(entries[version].read_bytes())
        document["target"] = json.loads(entries[2].read_bytes())["target"]
        entries[version].write_bytes(canonical_json(document))
    else:
        entries[3 if damage == "delete-latest" else 2].unlink()
    result = wb("fsck", ok=False)
    assert result.exit_code == 1 and problem in result.stdout, result.stdout
    assert result.stderr.count("\n") == 1
    assert "damaged" in wb("log", "m", ok=False).stderr


def test_a_manifest_whose_sizes_lie_is_refused_before_export(tiny_folders, wb: Cli, tmp_path: Path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "m")
    store = Store(wb.store)
    document = store.manifests.get(store.resolve("m"))
    document["tensors"]["model.norm.weight"]["bytes"] += 4
    data = canonical_json(document)
    digest = digest_bytes(data)
    (wb.store / manifest_path(digest)).parent.mkdir(parents=True, exist_ok=True)
    (wb.store / manifest_path(digest)).write_bytes(data)
    result = wb("export", digest, tmp_path / "out", ok=False)
    assert result.exit_code == 1 and "says 260 bytes but F32[64] takes 256" in result.stderr
    assert not (tmp_path / "out").exists()


def test_stale_temporaries_and_staging_folders_are_cleaned(tiny_folders, wb: Cli, store_dir: Path, tmp_path) -> None:
    wb("ingest", tiny_folders("llama"), "--name", "m")
    dead = f"{'0' * 32}-999999999-{os.uname().nodename}"
    (store_dir / "tmp" / f"{TEMP_PREFIX}{dead}").write_bytes(b"partial object")
    staging = tmp_path / f".out.wb-tmp-{dead}"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    fsck = wb("fsck")
    assert fsck.exit_code == 0 and f"note: tmp/{TEMP_PREFIX}{dead}: left by a writer that is gone" in fsck.stderr
    wb("export", "m", tmp_path / "out")
    assert not staging.exists() and (tmp_path / "out" / "config.json").is_file()
    wb("ingest", tiny_folders("qwen2"), "--name", "q")  # the next writer cleans the store's tmp/
    assert list((store_dir / "tmp").iterdir()) == []
    (store_dir / "tmp" / f"{TEMP_PREFIX}{dead}").write_bytes(b"partial object")
    assert json.loads(wb("gc", "--json").stdout)["temporaries"] == [f"tmp/{TEMP_PREFIX}{dead}"]


def test_a_remote_is_data_never_configuration(tiny_folders, tmp_path: Path) -> None:
    """A remote whose own remotes.json names another store lazily: pulling from it reads
    nothing from that store and writes nothing into it."""
    third, remote = Cli(tmp_path / "third"), Cli(tmp_path / "remote")
    third("ingest", tiny_folders("llama"), "--name", "m")
    remote("remote", "add", "elsewhere", f"file://{tmp_path / 'third'}")
    remote("pull", "elsewhere", "m", "--lazy")  # the remote holds manifests only
    third_before = snapshot(tmp_path / "third")
    local = Cli(tmp_path / "local")
    result = local("pull", f"file://{tmp_path / 'remote'}", "m", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "missing" in result.stderr
    assert snapshot(tmp_path / "third") == third_before
    assert not (tmp_path / "local" / "refs").exists()  # nothing recorded (the store was not even made)
    lazily = local("pull", f"file://{tmp_path / 'remote'}", "m", "--lazy", ok=False)
    assert "needs a named remote" in lazily.stderr


def test_a_parallel_pull_with_a_corrupt_object_leaves_no_temporaries(tiny_folders, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    Registry(remote).ingest(tiny_folders("llama"), "m")
    store = Store(remote)
    for digest in sorted(store.bank("m").object_digests())[:3]:
        path = Path(str(store.objects.local_path(digest)))
        os.chmod(path, 0o644)
        path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    local = Cli(tmp_path / "local")
    result = local("pull", f"file://{remote}", "m", "--jobs", "8", ok=False)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "is corrupt" in result.stderr
    leftovers = [p for p in (tmp_path / "local").rglob("*") if p.is_file() and p.name.startswith(TEMP_PREFIX)]
    assert leftovers == [] and local("refs", "--json").stdout.strip() == "[]"
