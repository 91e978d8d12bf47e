"""How compose's time grows with model size, against transformers, in one run.

    python tests/benchmarks/bench_scaling.py [--sizes 0.25,0.5,1,2,4] [--device cpu] [--dtype bfloat16] [--runs 3]

For each size (GB of bf16 weights) a Llama-shaped model (hidden 2048, FFN 5632, vocabulary
8,000, as many layers as make the size) and a rank-16 PEFT LoRA on its seven projections are
made, ingested, and the LoRA merged by PEFT into a folder (all untimed). Then, each step in its
own process, timed after imports up to a first forward pass, in turns (median of --runs):
compose(base) vs from_pretrained(base folder), compose(base + LoRA) vs from_pretrained(merged
folder). Printed: the seconds at each size, the ratios, and a least-squares line per series —
its slope in seconds per GB (what a larger model costs), intercept and log-log exponent.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from _measure import Measurement, drop_dir, interleaved_medians, machine, make_llama_with_lora, run_worker

SETUP = """
PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "base", dtype=dtype), work / "lora") \\
    .merge_and_unload().save_pretrained(work / "merged")
print(json.dumps({"total": sum(sizes)}))
"""
VOCAB = 8000
EMBEDDINGS_GB = 2 * VOCAB * 2048 * 2 / 1e9  # embed_tokens and lm_head, bf16
LAYER_GB = (2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 5632 + 2 * 2048) * 2 / 1e9
SERIES = [
    ("from_pretrained(base)", "compose(base)"),
    ("from_pretrained(merged)", "compose(base+LoRA)"),
]


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of ys against xs."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    return slope, mean_y - slope * mean_x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.25,0.5,1,2,4", help="model sizes in GB, comma-separated")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    common = (args.device, args.dtype)
    base_spec = json.dumps({"mes_version": "1", "base": "base", "steps": []})
    lora_spec = json.dumps({"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lora"}]})
    rows: list[tuple[float, dict[str, Measurement]]] = []
    for wanted in (float(size) for size in args.sizes.split(",")):
        layers = max(1, round((wanted - EMBEDDINGS_GB) / LAYER_GB))
        work = Path(tempfile.mkdtemp(prefix="wb-bench-scaling-"))
        gigabytes = make_llama_with_lora(work, layers, args.dtype, SETUP, vocab=VOCAB)["total"] / 1e9
        store = str(work / "store")
        steps = {
            "from_pretrained(base)": ("from_pretrained", str(work / "base")),
            "compose(base)": ("compose", store, base_spec),
            "from_pretrained(merged)": ("from_pretrained", str(work / "merged")),
            "compose(base+LoRA)": ("compose", store, lora_spec),
        }
        found = interleaved_medians(args.runs, {
            label: lambda label=label, step=step: run_worker(label, step[0], *common, *step[1:])
            for label, step in steps.items()
        })  # fmt: skip
        rows.append((gigabytes, found))
        timings = ", ".join(f"{m.label} {m.seconds:.2f} s" for m in found.values())
        print(f"{gigabytes:5.2f} GB ({layers} layers): {timings}", flush=True)
        drop_dir(str(work))

    print(f"\nmachine: {machine()}; device {args.device}, dtype {args.dtype}, median of {args.runs}")
    header = "".join(f"{label:>26}" for pair in SERIES for label in pair)
    print(f"{'GB':>6}{header}" + "".join(f"{'ratio':>8}" for _ in SERIES))
    for gigabytes, found in rows:
        cells = "".join(f"{found[label].seconds:>24.2f} s" for pair in SERIES for label in pair)
        ratios = "".join(f"{found[ours].seconds / found[peer].seconds:>8.2f}" for peer, ours in SERIES)
        print(f"{gigabytes:>6.2f}{cells}{ratios}")
    print(f"\n{'series':<26}{'s/GB':>8}{'intercept s':>13}{'log-log exponent':>18}")
    sizes = [gigabytes for gigabytes, _ in rows]
    slopes = {}
    for label in (label for pair in SERIES for label in pair):
        seconds = [found[label].seconds for _, found in rows]
        slope, intercept = fit(sizes, seconds)
        exponent, _ = fit([math.log(x) for x in sizes], [math.log(y) for y in seconds])
        slopes[label] = slope
        print(f"{label:<26}{slope:>8.3f}{intercept:>13.3f}{exponent:>18.2f}")
    for peer, ours in SERIES:
        print(f"slope ratio {ours} / {peer}: {slopes[ours] / slopes[peer]:.2f}")


if __name__ == "__main__":
    main()
