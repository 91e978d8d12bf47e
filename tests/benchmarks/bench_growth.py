"""compose of a grown ≥1 GB model vs from_pretrained of the same grown model on disk.

    python tests/benchmarks/bench_growth.py [--device cpu|cuda|auto] [--dtype bfloat16] [--runs 3]

A Llama-shaped bf16 base (7 layers, ≈0.85 GB) is grown to 9 layers (identity blocks) and an
FFN of 6144 (Net2Net) — ≈1.2 GB — and stored as an expansion bank (a recipe, no tensors).
The same grown model is materialised to a folder once (untimed). Then, each in its own
process, timed after the imports up to a first forward pass, in turns (peer, ours, peer, …):
`from_pretrained(grown folder)` vs `compose(expansion)`, which computes the grown tensors from
the base on the fly. Target ≤ 1.5× on the CPU, ≤ 1.2× on a GPU (`auto`: device_map="auto").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import drop_dir, interleaved_medians, machine, print_pairs, run_worker

SETUP = """
import json, sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from weightbank.composer import expand, write
from weightbank.composer.tiny_models import make_config
from weightbank.registry import Registry
work, dtype = Path(sys.argv[1]), getattr(torch, sys.argv[2])
config = make_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=7,
    num_attention_heads=16, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(work / "base")
registry = Registry(work / "store")
registry.ingest(work / "base", "base")
grown = expand(registry.store, "base", "grown", [{"op": "expand.depth", "layers": 9},
                                                 {"op": "expand.ffn", "size": 6144}])
result = write("grown", out_dir=work / "grown-folder", store=registry.store)
print(json.dumps({"parameters": grown.parameters, "bytes": result.bytes, "manifest": grown.manifest_bytes}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-growth-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = subprocess.run([sys.executable, "-c", SETUP, str(work), args.dtype], check=True, capture_output=True,
                           text=True)  # fmt: skip
    sizes = json.loads(setup.stdout.strip().splitlines()[-1])
    common = (args.device, args.dtype)
    peer, ours = interleaved_medians(args.runs, {
        label: lambda label=label, kind=kind, source=source: run_worker(label, kind, *common, *source)
        for label, kind, source in [
            ("from_pretrained(grown folder)", "from_pretrained", [str(work / "grown-folder")]),
            ("compose(expansion bank)", "compose", [str(work / "store"), json.dumps("grown")]),
        ]
    }).values()  # fmt: skip
    print(f"\nmachine: {machine()}; device {args.device}, dtype {args.dtype}, median of {args.runs}")
    print(f"grown model: {sizes['parameters']:,} parameters, {sizes['bytes'] / 1e9:.2f} GB; "
          f"expansion bank manifest {sizes['manifest']:,} bytes")  # fmt: skip
    print_pairs([(peer, ours, 1.5 if args.device == "cpu" else 1.2)])
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
