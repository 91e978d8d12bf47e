"""Two writers racing for the next version of one ref: exactly one wins, nothing is lost."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

from weightbank.registry import ConflictError, Registry, Store


def _race(store: str, target: str, barrier, results) -> None:  # runs in a child process
    s = Store(store)
    head = s.refs.head("shared")
    next_version = head.version + 1 if head else 1
    barrier.wait()
    try:
        entry = s.record("shared", target, action="ingest", version=next_version)
        results.put(("won", entry.version, target))
    except ConflictError as exc:
        results.put(("lost", str(exc), target))


def test_processes_racing_for_one_version(tiny_folders, store_dir: Path) -> None:
    store = Store(store_dir)
    registry = Registry(store)
    first = registry.ingest(tiny_folders("llama", seed=1), "a").digest
    second = registry.ingest(tiny_folders("llama", seed=2), "b").digest

    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(str(store_dir), t, barrier, results)) for t in (first, second)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        winners = [o for o in outcomes if o[0] == "won"]
        losers = [o for o in outcomes if o[0] == "lost"]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert winners[0][1] == round_ + 1
        assert "updated concurrently" in losers[0][1] and losers[0][2] in losers[0][1]
        # the winner's version points at the winner's target; the loser's manifest is still stored
        assert store.refs.get("shared", round_ + 1).target == winners[0][2]
        assert store.manifests.has(losers[0][2])
    assert store.refs.versions("shared") == [1, 2, 3]


def test_cli_ingests_at_once_never_lose_a_version(tiny_folders, store_dir: Path) -> None:
    folders = [tiny_folders("llama", seed=s) for s in range(10, 14)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "weightbank", "--store", str(store_dir), "ingest", str(f), "--name", "busy"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in folders
    ]
    outputs = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    won = [out for code, out, _ in outputs if code == 0]
    lost = [err for code, _, err in outputs if code != 0]
    store = Store(store_dir)
    assert len(store.refs.versions("busy")) == len(won) >= 1
    for err in lost:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ref 'busy' was updated concurrently"), err
    # every version names a different, intact manifest
    targets = [store.refs.get("busy", v).target for v in store.refs.versions("busy")]
    assert len(set(targets)) == len(targets)
    assert all(store.manifests.get(t)["type"] == "base" for t in targets)
