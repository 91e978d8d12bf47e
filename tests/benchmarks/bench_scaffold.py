"""scaffold.fold vs transformers / adapter.lora on the ≈1 GB Llama of bench_compose, in one run.

    python tests/benchmarks/bench_scaffold.py [--device cpu|cuda] [--dtype bfloat16] [--layers 9] [--runs 3]

A rank-16 lora seed on every layer's attention and MLP projections (63 seeds, random factors,
alpha 0.5), ingested as a scaffold bank from a PEFT folder; the same factors as a PEFT adapter
bank. Pairs (same device and dtype; each step in its own process, timed after imports up to the
first forward pass's logits, peak RSS of that process; the steps run in turns, median of --runs):
  A. compose(base + scaffold.fold)  vs  from_pretrained(fused folder)       (`scaffold fuse` + export)
  B. compose(base + scaffold.fold)  vs  compose(base + adapter.lora, weight 0.5)   target ≈ 1×
"""

from __future__ import annotations

import json
from functools import partial

from _measure import drop_dir, interleaved_medians, llama_with_lora, machine, print_pairs, run_worker

SETUP = """
from weightbank.composer import fuse_scaffold
from weightbank.registry.scaffold_add import add_scaffold_folder
seeds = add_scaffold_folder(registry.store, work / "lora", "seeds", host="base", alpha=0.5)
fused = fuse_scaffold(registry.store, "seeds", as_name="fused")
registry.export("fused", work / "fused")
print(json.dumps({"total": sum(sizes), "largest": max(sizes), "seeds": seeds.seeds, "changed": fused.changed}))
"""


def main() -> None:
    args, work, sizes = llama_with_lora(__doc__.splitlines()[0], "wb-bench-scaffold-", SETUP)
    store = str(work / "store")
    # The scaffold is recorded against its pre-decision version: `fuse` appended a decision.
    fold_spec = json.dumps({"mes_version": "1", "base": "base", "steps": [{"op": "scaffold.fold", "bank": "seeds@v1"}]})
    lora_spec = json.dumps(
        {"mes_version": "1", "base": "base", "steps": [{"op": "adapter.lora", "bank": "lora", "weight": 0.5}]}
    )
    common = (args.device, args.dtype)

    steps = {
        "compose(base+scaffold.fold)": ("compose", store, fold_spec),
        "from_pretrained(fused)": ("from_pretrained", str(work / "fused")),
        "compose(base+adapter.lora)": ("compose", store, lora_spec),
    }
    makers = {label: partial(run_worker, label, kind, *common, *rest) for label, (kind, *rest) in steps.items()}
    found = interleaved_medians(args.runs, makers)
    fold = found["compose(base+scaffold.fold)"]
    pairs = [(found["from_pretrained(fused)"], fold, 1.2), (found["compose(base+adapter.lora)"], fold, 1.0)]
    print(f"\nmachine: {machine()}; device {args.device}, dtype {args.dtype}")
    print(
        f"model: {sizes['total'] / 1e9:.2f} GB, largest tensor {sizes['largest'] / 2**20:.0f} MiB; "
        f"{sizes['seeds']} lora seeds (r = 16), fuse changed {sizes['changed']} tensors"
    )
    print_pairs(pairs)
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
