"""The reliability suite at 10–100× the trials of the test suite: kill -9 at random moments of
ingest, compose --name, push, pull and gc; gc beside an ingest that reuses its objects; and
seeded fuzzing of safetensors headers, manifests and ref entries.

    python tests/benchmarks/stress.py [--kills 20] [--races 20] [--fuzz 5000] [--workdir DIR]

Prints, per kind, the trials, the failures and their classes; exits 1 if any trial failed.
What each trial checks is in tests/crash_harness.py and docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers

import transformers

from weightbank.registry import Registry, Store, WeightbankError
from weightbank.registry.refs import entry_path, head_path
from weightbank.registry.safetensors_format import read_header

from _measure import machine
from crash_harness import KILL_KINDS, fresh_work, gc_race_trial, kill_trial, make_folders
from fuzzing import mutate


def _report(kind: str, trials: int, failures: Counter[str], seconds: float) -> int:
    failed = sum(failures.values())
    print(f"{kind:<22} trials {trials:>5}  failures {failed:>3}  ({seconds:.1f} s)")
    for failure, count in failures.most_common():
        print(f"    {count:>3} × {failure}")
    return failed


def _fuzz_headers(cases: int, rng: random.Random) -> Counter[str]:
    import torch
    from safetensors.torch import load as safetensors_load
    from safetensors.torch import save as safetensors_save

    original = safetensors_save({"a": torch.ones(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16)})
    size = int.from_bytes(original[:8], "little")
    header, data = original[8 : 8 + size], original[8 + size :]
    failures: Counter[str] = Counter()
    for _ in range(cases):
        damaged_header = mutate(header, rng)
        damaged = len(damaged_header).to_bytes(8, "little") + damaged_header + data
        try:
            read_header(io.BytesIO(damaged), len(damaged), "fuzz")
        except WeightbankError:
            continue
        except Exception as exc:
            failures[f"crash: {type(exc).__name__}"] += 1
            continue
        try:
            safetensors_load(damaged)
        except Exception:
            failures["accepted what safetensors refuses"] += 1
    return failures


def _fuzz_refs(cases: int, rng: random.Random, folders: dict[str, Path], root: Path) -> Counter[str]:
    source = root / "refs-source"
    registry = Registry(source)
    registry.ingest(folders["model"], "m")
    registry.ingest(folders["other"], "m")
    paths = [entry_path("m", 1), entry_path("m", 2), head_path("m")]
    failures: Counter[str] = Counter()
    for trial in range(cases):
        store_root = fresh_work(root, "refs-trial")
        for path in paths:
            (store_root / path).parent.mkdir(parents=True, exist_ok=True)
            (store_root / path).write_bytes((source / path).read_bytes())
        victim = store_root / paths[trial % len(paths)]
        original = victim.read_bytes()
        damaged = mutate(original, rng)
        if damaged == original:
            continue
        victim.write_bytes(damaged)
        try:
            Store(store_root).refs.history("m")
            failures["damaged ref entry read silently"] += 1
        except WeightbankError:
            pass
        except Exception as exc:
            failures[f"crash: {type(exc).__name__}"] += 1
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20, help="kill trials per kind")
    parser.add_argument("--races", type=int, default=20, help="gc-beside-ingest trials")
    parser.add_argument("--fuzz", type=int, default=5000, help="fuzz cases per target")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wb-stress-")))
        folders = make_folders(fresh_work(root, "models"))
        failed = 0
        for kind in KILL_KINDS:
            start, failures = time.perf_counter(), Counter[str]()
            for trial in range(args.kills):
                failures.update(kill_trial(kind, fresh_work(root, f"{kind}-{trial}"), folders, rng))
            failed += _report(f"kill -9 {kind}", args.kills, failures, time.perf_counter() - start)
        start, failures = time.perf_counter(), Counter()
        for trial in range(args.races):
            failures.update(gc_race_trial(fresh_work(root, f"race-{trial}"), folders, rng))
        failed += _report("gc beside ingest", args.races, failures, time.perf_counter() - start)
        start = time.perf_counter()
        failed += _report("fuzz headers", args.fuzz, _fuzz_headers(args.fuzz, rng), time.perf_counter() - start)
        start = time.perf_counter()
        cases = args.fuzz // 10
        failed += _report("fuzz ref entries", cases, _fuzz_refs(cases, rng, folders, root), time.perf_counter() - start)
    print(f"machine: {machine()}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
