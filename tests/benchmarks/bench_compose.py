"""compose vs transformers / PEFT on a ≥1 GB model made on the spot, in one run.

    python tests/benchmarks/bench_compose.py [--device cpu|cuda] [--dtype bfloat16] [--layers 9]

Pairs (same device and dtype; each step in its own process, timed after imports, peak RSS
of that process):
  A. compose(base)            vs  from_pretrained(base folder)            target ≤ 1.05×
  B. compose(base + LoRA)     vs  from_pretrained(PEFT-merged folder)     target ≤ 1.2×
  C. compose --out (stream)   vs  PEFT load + merge_and_unload + save_pretrained   target < 1×
On a GPU, host RSS during compose should stay ≤ 2× the largest tensor + 400 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import drop_dir, machine

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def worker(kind: str, args: list[str]) -> None:
    """Runs in a child: import, then time one operation; prints JSON."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    from transformers import AutoModelForCausalLM

    device, dtype_name, *rest = args
    dtype = getattr(torch, dtype_name)
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "from_pretrained":
        model = AutoModelForCausalLM.from_pretrained(rest[0], dtype=dtype, device_map=device)
    elif kind == "compose":
        from weightbank.composer import compose

        spec = json.loads(rest[1])
        model, _ = compose(spec, device=device, dtype=dtype_name, store=rest[0])
    elif kind == "compose_out":
        from weightbank.composer import write

        write(json.loads(rest[1]), out_dir=rest[2], dtype=dtype_name, store=rest[0])
        model = None
    elif kind == "peft_merge_save":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(rest[0], dtype=dtype, device_map=device)
        model = PeftModel.from_pretrained(base, rest[1]).merge_and_unload()
        model.save_pretrained(rest[2])
    else:
        raise SystemExit(f"unknown worker {kind}")
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_rss_mb": usage / 1024, "import_rss_mb": baseline_rss / 1024}))
    del model


def run_worker(kind: str, *args: str) -> dict[str, float]:
    os.sync()
    out = subprocess.run(
        [sys.executable, __file__, "--worker", kind, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def median(runs: int, kind: str, *args: str, between: object = None) -> dict[str, float]:
    results = []
    for _ in range(runs):
        results.append(run_worker(kind, *args))
        if callable(between):
            between()
    results.sort(key=lambda r: r["seconds"])
    middle = dict(results[len(results) // 2])
    middle["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    return middle


SETUP = """
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from peft import LoraConfig, PeftModel, get_peft_model
from weightbank.composer.tiny_models import make_config
from weightbank.registry import Registry
work, layers, dtype = Path(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3])
TARGETS = json.loads(sys.argv[4])
config = make_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
    num_attention_heads=16, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=dtype)
model.save_pretrained(work / "base")
lora = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False))
lora.save_pretrained(work / "lora")
PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "base", dtype=dtype), work / "lora") \\
    .merge_and_unload().save_pretrained(work / "merged")
registry = Registry(work / "store")
registry.ingest(work / "base", "base")
registry.ingest(work / "lora", "lora", base="base")
sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
print(json.dumps({"total": sum(sizes), "largest": max(sizes)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args, extra = parser.parse_known_args()
    if args.worker:
        worker(args.worker[0], [*args.worker[1:], *extra])
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-compose-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP, str(work), str(args.layers), args.dtype, json.dumps(LORA_TARGETS)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    sizes = json.loads(setup.stdout.strip().splitlines()[-1])
    store = str(work / "store")
    base_spec = json.dumps({"mes_version": "1", "base": "base", "steps": []})
    lora_spec = json.dumps({"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lora"}]})
    common = (args.device, args.dtype)
    out = str(work / "out")

    pairs = [
        ("A", "from_pretrained(base)", median(args.runs, "from_pretrained", *common, str(work / "base")),
         "compose(base)", median(args.runs, "compose", *common, store, base_spec), 1.05),
        ("B", "from_pretrained(merged)", median(args.runs, "from_pretrained", *common, str(work / "merged")),
         "compose(base+LoRA)", median(args.runs, "compose", *common, store, lora_spec), 1.2),
        ("C", "PEFT merge + save_pretrained",
         median(args.runs, "peft_merge_save", *common, str(work / "base"), str(work / "lora"), out,
                between=lambda: drop_dir(out)),
         "compose --out (streamed)",
         median(args.runs, "compose_out", *common, store, lora_spec, out, between=lambda: drop_dir(out)), 1.0),
    ]  # fmt: skip
    print(f"\nmachine: {machine()}; device {args.device}, dtype {args.dtype}")
    print(f"model: {sizes['total'] / 1e9:.2f} GB, largest tensor {sizes['largest'] / 2**20:.0f} MiB")
    header = f"{'':2}{'peer':<30}{'s':>7}{'RSS MiB':>9}  {'weightbank':<26}{'s':>7}{'RSS MiB':>9}"
    print(f"{header}{'ratio':>7}{'target':>8}")
    for key, peer_label, peer, ours_label, ours, target in pairs:
        ratio = ours["seconds"] / peer["seconds"]
        print(
            f"{key:<2}{peer_label:<30}{peer['seconds']:>7.2f}{peer['peak_rss_mb']:>9.0f}  "
            f"{ours_label:<26}{ours['seconds']:>7.2f}{ours['peak_rss_mb']:>9.0f}{ratio:>7.2f}{target:>8.2f}"
        )
    if args.device == "cuda":
        compose_rss = max(p[4]["peak_rss_mb"] for p in pairs[:2])
        budget = 2 * sizes["largest"] / 2**20 + 400
        print(f"host RSS during compose on the GPU: {compose_rss:.0f} MiB (target ≤ {budget:.0f} MiB)")
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
