"""compose vs transformers / PEFT on a ≥1 GB model made on the spot, in one run.

    python tests/benchmarks/bench_compose.py [--device cpu|cuda|auto] [--dtype bfloat16] [--layers 9] [--runs 3]

Pairs (same device and dtype — `auto` is device_map="auto" for both; each step in its own
process, timed after imports up to a first forward pass, peak RSS of that process; the steps
run in turns, A B C A B C …, and each row is the median of --runs):
                                                                                  CPU    GPU
  A. compose(base)            vs  from_pretrained(base folder)             ≤ 1.1×  ≤ 1.05×
  B. compose(base + LoRA)     vs  from_pretrained(PEFT-merged folder)      ≤ 2×    ≤ 1.2×
  C. compose --out (stream)   vs  PEFT load + merge_and_unload + save_pretrained   < 1×
On a GPU, host RSS during compose should stay ≤ 2× the largest tensor + 400 MB.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from _measure import Measurement, drop_dir, interleaved_medians, llama_with_lora, machine, print_pairs, run_worker

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

    def step(label: str, kind: str, *rest: str) -> tuple[str, Callable[[], Measurement]]:
        def once() -> Measurement:
            drop_dir(out)
            return run_worker(label, kind, *common, *rest)

        return label, once

    found = interleaved_medians(args.runs, dict([
        step("from_pretrained(base)", "from_pretrained", str(work / "base")),
        step("compose(base)", "compose", store, base_spec),
        step("from_pretrained(merged)", "from_pretrained", str(work / "merged")),
        step("compose(base+LoRA)", "compose", store, lora_spec),
        step("PEFT merge + save_pretrained", "peft_merge_save", str(work / "base"), str(work / "lora"), out),
        step("compose --out (streamed)", "compose_out", store, lora_spec, out),
    ]))  # fmt: skip
    targets = (1.1, 2.0, 1.0) if args.device == "cpu" else (1.05, 1.2, 1.0)
    rows = list(found.values())
    pairs = [(rows[2 * i], rows[2 * i + 1], target) for i, target in enumerate(targets)]
    print(f"\nmachine: {machine()}; device {args.device}, dtype {args.dtype}, median of {args.runs}")
    print(f"model: {sizes['total'] / 1e9:.2f} GB, largest tensor {sizes['largest'] / 2**20:.0f} MiB")
    print_pairs(pairs)
    if args.device != "cpu":
        compose_rss = max(ours.peak_rss_mb for _, ours, _ in pairs[:2])
        budget = 2 * sizes["largest"] / 2**20 + 400
        print(f"host RSS during compose on the GPU: {compose_rss:.0f} MiB (target ≤ {budget:.0f} MiB)")
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
