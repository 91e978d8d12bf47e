"""Crash, race and corruption trials against real stores, shared by the test suite (a few
trials) and `tests/benchmarks/stress.py` (many).

A kill trial starts a real `weightbank` process, SIGKILLs it at a random moment, then checks
what the store promises: `fsck` finds no damage (temporaries a killed writer leaves are only
notes), and running the same command again succeeds and leaves a clean store. A race trial
runs gc beside an ingest that reuses the very objects gc is collecting. Each trial returns the
classes of failure it saw (empty: the promise held).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightbank.registry import Registry

from helpers import write_key_pair

MEDIUM_MODEL = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=8, vocab_size=4096)


def weightbank(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "weightbank", *map(str, args)]


def problems_of(store: Path) -> list[str]:
    """fsck's verdict, as failure classes ("fsck: <what>")."""
    report = Registry(store).fsck()
    return [f"fsck: {problem.detail.split(':')[0]}" for problem in report.problems]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _kill_after(command: list[str], delay: float) -> None:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()


@dataclass
class Scenario:
    """A store made ready for one command, and how to tell that the command's work is there."""

    store: Path
    command: list[str]
    done: Callable[[], bool]
    extra_stores: tuple[Path, ...] = ()


def _scenario(kind: str, work: Path, folders: dict[str, Path]) -> Scenario:
    store = work / "store"
    registry = Registry(store)
    registry.ingest(folders["model"], "base")
    if kind == "ingest":
        return Scenario(store, weightbank("--store", store, "ingest", folders["other"], "--name", "new"),
                        lambda: registry.audit("new").ok)  # fmt: skip
    if kind == "compose":
        registry.ingest(folders["lora"], "lora", base="base")
        spec = work / "spec.yaml"
        spec.write_text("mes_version: '1'\nbase: base\nsteps:\n  - {op: adapter.lora, bank: lora}\n")
        return Scenario(store, weightbank("--store", store, "-q", "compose", spec, "--name", "merged"),
                        lambda: registry.audit("merged").ok)  # fmt: skip
    if kind == "push":
        remote = work / "remote"
        registry.ingest(folders["other"], "base")
        return Scenario(store, weightbank("--store", store, "push", f"file://{remote}", "base", "-j", "4"),
                        lambda: Registry(remote).audit("base@v2").ok, (remote,))  # fmt: skip
    if kind == "pull":
        remote = work / "remote"
        Registry(remote).ingest(folders["other"], "theirs")
        return Scenario(store, weightbank("--store", store, "pull", f"file://{remote}", "theirs"),
                        lambda: registry.audit("theirs").ok)  # fmt: skip
    if kind == "gc":  # signed banks: gc removes the signatures of what it removes first
        registry.ingest(folders["other"], "old")
        key, _ = write_key_pair(work, "signer")
        for ref in ("base", "old"):
            registry.sign(ref, key)
        registry.rm("old")

        def done() -> bool:
            finished = not registry.gc(grace_seconds=0).objects and len(list(registry.store.signatures)) == 1
            return registry.audit("base").ok and len(registry.signers("base")) == 1 and finished

        return Scenario(store, weightbank("--store", store, "gc", "--grace", "0"), done)
    raise ValueError(kind)


KILL_KINDS = ("ingest", "compose", "push", "pull", "gc")


def kill_trial(kind: str, work: Path, folders: dict[str, Path], rng: random.Random, window: float = 1.5) -> list[str]:
    """Kill `kind`'s command at a random moment within `window` seconds, then check and re-run it."""
    scenario = _scenario(kind, work, folders)
    _kill_after(scenario.command, rng.uniform(0.05, window))
    failures = [f"after kill: {p}" for store in (scenario.store, *scenario.extra_stores) for p in problems_of(store)]
    rerun = _run(scenario.command)
    if rerun.returncode != 0:
        failures.append(f"re-run failed: {rerun.stderr.strip().splitlines()[-1] if rerun.stderr else rerun.returncode}")
    failures += [f"after re-run: {p}" for store in (scenario.store, *scenario.extra_stores) for p in problems_of(store)]
    if rerun.returncode == 0 and not scenario.done():
        failures.append("re-run did not finish the work")
    return failures


def gc_race_trial(work: Path, folders: dict[str, Path], rng: random.Random) -> list[str]:
    """gc collecting old unreachable objects while an ingest deduplicates against them. The
    ingest publishes a complete bank (or fails cleanly asking for a re-run); a ref never
    names a deleted object."""
    store = work / "store"
    Registry(work / "scratch").ingest(folders["model"], "victim")
    an_hour_ago = time.time() - 3600
    for path in (work / "scratch").rglob("*"):  # the same objects, unreachable and old, in `store`
        if path.is_file() and path.parts[len(work.parts) + 1] in ("objects", "manifests"):
            target = store / path.relative_to(work / "scratch")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            os.utime(target, (an_hour_ago, an_hour_ago))
    registry = Registry(store)
    ingest = subprocess.Popen(weightbank("--store", store, "ingest", folders["model"], "--name", "keeper"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(rng.uniform(0.0, 0.4))
    gc = _run(weightbank("--store", store, "gc", "--grace", "10m"))
    _, ingest_err = ingest.communicate(timeout=600)
    failures = [] if gc.returncode == 0 else [f"gc failed: {gc.stderr.strip()}"]
    if ingest.returncode != 0 and "run the command again" not in ingest_err:
        failures.append(f"ingest failed: {ingest_err.strip()}")
    failures += problems_of(store)
    if ingest.returncode == 0:
        report = registry.audit("keeper")
        failures += [f"keeper: {p.detail.split(':')[0]}" for p in report.problems]
    return failures


def fresh_work(root: Path, name: str) -> Path:
    work = root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work


def make_folders(root: Path) -> dict[str, Path]:
    """The models trials use: a ~40 MB Llama (so a kill lands mid-work), another one, a LoRA."""
    from weightbank.composer.tiny_models import save_tiny_model

    from helpers import make_lora

    folders = {
        "model": save_tiny_model("llama", root / "model", 0, **MEDIUM_MODEL),
        "other": save_tiny_model("llama", root / "other", 1, **MEDIUM_MODEL),
    }
    folders["lora"] = make_lora(folders["model"], root / "lora", r=8, target_modules=["q_proj", "v_proj"])
    return folders
