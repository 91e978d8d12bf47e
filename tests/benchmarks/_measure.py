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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# The load average when the benchmark started, printed beside the one at its end (`machine`).
_LOAD_AT_START = os.getloadavg()


@dataclass(frozen=True)
class Measurement:
    label: str
    seconds: float
    peak_rss_mb: float
    gpu_peak_mb: float = 0.0  # torch.cuda.max_memory_allocated, for runs on a GPU


def _median(label: str, found: list[Measurement]) -> Measurement:
    """The median run's time, the largest peak RSS and GPU memory of all runs."""
    found = sorted(found, key=lambda m: m.seconds)
    peak_rss, peak_gpu = max(m.peak_rss_mb for m in found), max(m.gpu_peak_mb for m in found)
    return replace(found[len(found) // 2], label=label, peak_rss_mb=peak_rss, gpu_peak_mb=peak_gpu)


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
    return _median(label, results)


def interleaved_medians(runs: int, makers: Mapping[str, Callable[[], Measurement]]) -> dict[str, Measurement]:
    """Like `median_of` for several steps at once, run in turns (A, B, C, A, B, C, …), so that a
    load change on a shared machine hits every step alike rather than one block of runs."""
    results: dict[str, list[Measurement]] = {label: [] for label in makers}
    for _ in range(runs):
        for label, make in makers.items():
            results[label].append(make())
    return {label: _median(label, found) for label, found in results.items()}


def warm_page_cache(folder: str) -> None:
    """Read every file under `folder` once, so that a step finds its input in the page cache."""
    for parent, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(parent, name), "rb", buffering=0) as file:
                while file.read(16 << 20):
                    pass


def run_worker(label: str, kind: str, *args: str) -> Measurement:
    """One `_workers.py` run in a fresh process, timed after imports. First, untimed: dirty pages
    are flushed and every folder among the arguments (a model folder, a store) is read into the
    page cache — on a machine whose memory is nearly full of cache, one step's input would
    otherwise be evicted by another's and read from disk, while its peer's stays cached."""
    os.sync()
    for folder in (arg for arg in args if os.path.isdir(arg)):
        warm_page_cache(folder)
    script = str(Path(__file__).with_name("_workers.py"))
    out = subprocess.run([sys.executable, script, kind, *args], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return Measurement(label, result["seconds"], result["peak_rss_mb"], result.get("gpu_peak_mb", 0.0))


def machine() -> str:
    """The machine, its GPU if torch sees one, and the load average at the start and now."""
    cpus = os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        mem_gb = int(meminfo.readline().split()[1]) / 1024 / 1024
    probe = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    gpu = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    load = " / ".join(" ".join(f"{x:.2f}" for x in loads) for loads in (_LOAD_AT_START, os.getloadavg()))
    return (
        f"{platform.machine()}, {cpus} CPUs, {mem_gb:.0f} GiB RAM{', ' + gpu if gpu else ''}, "
        f"Python {platform.python_version()}; load average (1, 5, 15 min) at start / end: {load}"
    )


def drop_dir(path: str) -> None:
    subprocess.run(["rm", "-rf", path], check=True)


def print_pairs(pairs: list[tuple[Measurement, Measurement, float]]) -> None:
    """peer vs weightbank rows: seconds, peak RSS (and GPU memory, on a GPU), ratio and target."""
    gpu = any(m.gpu_peak_mb for pair in pairs for m in pair[:2])

    def cells(m: Measurement) -> str:
        return f"{m.seconds:>7.2f}{m.peak_rss_mb:>9.0f}" + (f"{m.gpu_peak_mb:>9.0f}" if gpu else "")

    columns = f"{'s':>7}{'RSS MiB':>9}" + (f"{'GPU MiB':>9}" if gpu else "")
    print(f"{'peer':<30}{columns}  {'weightbank':<28}{columns}{'ratio':>7}{'target':>8}")
    for peer, ours, target in pairs:
        ratio = ours.seconds / peer.seconds
        print(f"{peer.label:<30}{cells(peer)}  {ours.label:<28}{cells(ours)}{ratio:>7.2f}{target:>8.2f}")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Setup code for `python -c CODE WORK LAYERS DTYPE [VOCAB]`: the ≈1 GB Llama-shaped model (9 layers,
# vocabulary 32,000, bf16: 1.09 GB) saved to WORK/base, a rank-16 PEFT LoRA on its seven projections (random
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
vocab = int(sys.argv[4]) if len(sys.argv) > 4 else 32000
config = make_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
    num_attention_heads=16, num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=2048)
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
    return args, work, make_llama_with_lora(work, args.layers, args.dtype, steps)


def make_llama_with_lora(work: Path, layers: int, dtype: str, steps: str, vocab: int = 32000) -> dict[str, Any]:
    """Run LLAMA_WITH_LORA, then `steps`, in a child process (untimed); the JSON it prints last."""
    work.mkdir(parents=True, exist_ok=True)
    setup = subprocess.run(
        [sys.executable, "-c", LLAMA_WITH_LORA + steps, str(work), str(layers), dtype, str(vocab)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(setup.stdout.strip().splitlines()[-1])
