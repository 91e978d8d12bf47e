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

import json
from collections.abc import Callable

from _measure import Measurement, drop_dir, llama_with_lora, machine, median_of, print_pairs, run_worker

SETUP = """
PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work / "base", dtype=dtype), work / "lora") \\
    .merge_and_unload().save_pretrained(work / "merged")
print(json.dumps({"total": sum(sizes), "largest": max(sizes)}))
"""


def main() -> None:
    args, work, sizes = llama_with_lora(__doc__.splitlines()[0], "wb-bench-compose-", SETUP)
    store = str(work / "store")
    base_spec = json.dumps({"mes_version": "1", "base": "base", "steps": []})
    lora_spec = json.dumps({"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lora"}]})
    common = (args.device, args.dtype)
    out = str(work / "out")

    def timed(label: str, kind: str, *rest: str, between: Callable[[], None] = lambda: None) -> Measurement:
        return median_of(args.runs, label, lambda: run_worker(label, kind, *common, *rest), between)

    clear_out = lambda: drop_dir(out)  # noqa: E731
    pairs = [
        (timed("from_pretrained(base)", "from_pretrained", str(work / "base")),
         timed("compose(base)", "compose", store, base_spec), 1.05),
        (timed("from_pretrained(merged)", "from_pretrained", str(work / "merged")),
         timed("compose(base+LoRA)", "compose", store, lora_spec), 1.2),
        (timed("PEFT merge + save_pretrained", "peft_merge_save", str(work / "base"), str(work / "lora"), out,
               between=clear_out),
         timed("compose --out (streamed)", "compose_out", store, lora_spec, out, between=clear_out), 1.0),
    ]  # fmt: skip
    print(f"\nmachine: {machine()}; device {args.device}, dtype {args.dtype}")
    print(f"model: {sizes['total'] / 1e9:.2f} GB, largest tensor {sizes['largest'] / 2**20:.0f} MiB")
    print_pairs(pairs)
    if args.device == "cuda":
        compose_rss = max(ours.peak_rss_mb for _, ours, _ in pairs[:2])
        budget = 2 * sizes["largest"] / 2**20 + 400
        print(f"host RSS during compose on the GPU: {compose_rss:.0f} MiB (target ≤ {budget:.0f} MiB)")
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
