"""Shared by the benchmarks: run a command in a child process, time it, read its peak RSS."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Measurement:
    label: str
    seconds: float
    peak_rss_mb: float


def measure(label: str, argv: list[str], env: dict[str, str] | None = None, stdout: Path | None = None) -> Measurement:
    """Run `argv` to completion; wall time and the child's own peak RSS (wait4 rusage).
    The child's standard output goes to the file `stdout`, if given.

    Dirty pages left by earlier steps are flushed first (`sync`, untimed) so one step's
    writeback is not billed to the next. The parent must stay small: a forked child's peak
    RSS starts from the parent's.
    """
    os.sync()
    with open(stdout or os.devnull, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=out)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label}: {' '.join(argv)} exited {proc.returncode}")
    return Measurement(label, seconds, usage.ru_maxrss / 1024)


def median_of(
    runs: int, label: str, make: Callable[[], Measurement], between: Callable[[], None] = lambda: None
) -> Measurement:
    """Median wall time (and the largest peak RSS) of `runs` repetitions, `between` run after each."""
    results = []
    for _ in range(runs):
        results.append(make())
        between()
    results.sort(key=lambda m: m.seconds)
    return Measurement(label, results[len(results) // 2].seconds, max(m.peak_rss_mb for m in results))


def interleaved_medians(runs: int, makers: Mapping[str, Callable[[], Measurement]]) -> dict[str, Measurement]:
    """Like `median_of` for several steps at once, run in turns (A, B, C, A, B, C, …), so that a
    load change on a shared machine hits every step alike rather than one block of runs."""
    results: dict[str, list[Measurement]] = {label: [] for label in makers}
    for _ in range(runs):
        for label, make in makers.items():
            results[label].append(make())
    medians = {}
    for label, found in results.items():
        found.sort(key=lambda m: m.seconds)
        medians[label] = Measurement(label, found[len(found) // 2].seconds, max(m.peak_rss_mb for m in found))
    return medians


def run_worker(label: str, kind: str, *args: str) -> Measurement:
    """One `_workers.py` run in a fresh process (dirty pages flushed first), timed after imports."""
    os.sync()
    script = str(Path(__file__).with_name("_workers.py"))
    out = subprocess.run([sys.executable, script, kind, *args], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return Measurement(label, result["seconds"], result["peak_rss_mb"])


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        mem_gb = int(meminfo.readline().split()[1]) / 1024 / 1024
    return f"{platform.machine()}, {cpus} CPUs, {mem_gb:.0f} GiB RAM, Python {platform.python_version()}"


def drop_dir(path: str) -> None:
    subprocess.run(["rm", "-rf", path], check=True)


def print_pairs(pairs: list[tuple[Measurement, Measurement, float]]) -> None:
    """peer vs weightbank rows: seconds, peak RSS, ratio and target."""
    print(f"{'peer':<30}{'s':>7}{'RSS MiB':>9}  {'weightbank':<28}{'s':>7}{'RSS MiB':>9}{'ratio':>7}{'target':>8}")
    for peer, ours, target in pairs:
        ratio = ours.seconds / peer.seconds
        print(
            f"{peer.label:<30}{peer.seconds:>7.2f}{peer.peak_rss_mb:>9.0f}  "
            f"{ours.label:<28}{ours.seconds:>7.2f}{ours.peak_rss_mb:>9.0f}{ratio:>7.2f}{target:>8.2f}"
        )


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Setup code for `python -c CODE WORK LAYERS DTYPE`: the ≈1 GB Llama-shaped model (9 layers,
# bf16: 1.09 GB) saved to WORK/base, a rank-16 PEFT LoRA on its seven projections (random
# factors) to WORK/lora, both ingested into WORK/store as `base` and `lora`. Benchmarks append
# their own steps; `model`, `registry`, `work`, `dtype` are defined.
LLAMA_WITH_LORA = f"""
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model
from weightbank.composer.tiny_models import make_config
from weightbank.registry import Registry
work, layers, dtype = Path(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
config = make_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
    num_attention_heads=16, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=dtype)
model.save_pretrained(work / "base")
lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules={LORA_TARGETS!r}, init_lora_weights=False))
lora.save_pretrained(work / "lora")
registry = Registry(work / "store")
registry.ingest(work / "base", "base")
registry.ingest(work / "lora", "lora", base="base")
sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
"""


def llama_with_lora(description: str, prefix: str, steps: str) -> tuple[argparse.Namespace, Path, dict[str, Any]]:
    """The model benchmarks' options (--device, --dtype, --layers, --runs, --workdir), their work
    folder, and the JSON their setup prints: LLAMA_WITH_LORA, then `steps`, run untimed in a
    child process."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    setup = subprocess.run(
        [sys.executable, "-c", LLAMA_WITH_LORA + steps, str(work), str(args.layers), args.dtype],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return args, work, json.loads(setup.stdout.strip().splitlines()[-1])
