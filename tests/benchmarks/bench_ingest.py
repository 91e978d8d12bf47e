"""Ingest / re-ingest / export of a ≥1 GB model vs `cp -r` of the same folder, in one run.

    python tests/benchmarks/bench_ingest.py [--workdir DIR] [--layers N] [--runs R]

Targets (issue 3): ingest ≤ 1.2× cp, re-ingest ≤ 0.3× cp, peak RSS ≤ largest tensor + 300 MB.
Our ingest makes every object durable (fsync) before naming it; `cp -r` leaves its copy in
the page cache, so `cp -r && sync` is measured as the like-for-like peer too. Each step is
a separate process (RSS is that process's peak) and the median of --runs repetitions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import drop_dir, machine, measure, median_of

MAKE_MODEL = """
import json, sys, torch
from safetensors import safe_open
from pathlib import Path
from transformers import AutoModelForCausalLM
from weightbank.composer.tiny_models import make_config
folder, layers = Path(sys.argv[1]), int(sys.argv[2])
config = make_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
    num_attention_heads=16, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(folder, max_shard_size="500MB")
sizes = []
for shard in folder.glob("*.safetensors"):
    with safe_open(shard, "pt") as f:
        sizes += [f.get_slice(k).get_shape() for k in f.keys()]
nbytes = [2 * int(torch.tensor(s).prod()) for s in sizes]
print(json.dumps({"total": sum(nbytes), "largest": max(nbytes)}))
"""


def make_model(folder: Path, layers: int) -> tuple[int, int]:
    """A Llama-shaped bf16 model, made in a child process; (total bytes, largest tensor bytes)."""
    out = subprocess.run(
        [sys.executable, "-c", MAKE_MODEL, str(folder), str(layers)], check=True, capture_output=True, text=True
    ).stdout
    sizes = json.loads(out.strip().splitlines()[-1])
    return sizes["total"], sizes["largest"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=9, help="9 layers ≈ 1.1 GB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-ingest-"))
    source, store, copy = work / "model", work / "store", work / "copy"
    total, largest = make_model(source, args.layers)
    wb = [sys.executable, "-m", "weightbank", "--quiet", "--store", str(store)]

    def cp() -> object:
        return measure("cp -r", ["cp", "-r", str(source), str(copy)])

    def cp_sync() -> object:
        return measure("cp -r && sync", ["sh", "-c", f"cp -r {source} {copy} && sync"])

    def ingest() -> object:
        return measure("ingest", [*wb, "ingest", str(source), "--name", "big"])

    def reingest() -> object:
        return measure("re-ingest (unchanged)", [*wb, "ingest", str(source), "--name", "big"])

    def export() -> object:
        return measure("export", [*wb, "export", "big", str(work / "exported")])

    rows = [
        median_of(args.runs, "cp -r", cp, lambda: drop_dir(str(copy))),
        median_of(args.runs, "cp -r && sync", cp_sync, lambda: drop_dir(str(copy))),
        median_of(args.runs, "ingest", ingest, lambda: drop_dir(str(store))),
    ]
    measure("first ingest (untimed setup)", [*wb, "ingest", str(source), "--name", "big"])
    rows.append(median_of(args.runs, "re-ingest (unchanged)", reingest, lambda: None))
    rows.append(median_of(args.runs, "export", export, lambda: drop_dir(str(work / "exported"))))

    cp_s, cp_sync_s = rows[0].seconds, rows[1].seconds
    budget_mb = largest / 2**20 + 300
    print(f"\nmachine: {machine()}")
    print(f"model: {total / 1e9:.2f} GB bf16 Llama in safetensors shards, largest tensor {largest / 2**20:.0f} MiB")
    print(f"{'step':<24}{'seconds':>9}{'× cp':>8}{'× cp+sync':>11}{'peak RSS MiB':>14}")
    for m in rows:
        ratios = f"{m.seconds / cp_s:>8.2f}{m.seconds / cp_sync_s:>11.2f}"
        print(f"{m.label:<24}{m.seconds:>9.3f}{ratios}{m.peak_rss_mb:>14.0f}")
    ingest_row, reingest_row, export_row = rows[2], rows[3], rows[4]
    print(f"ingest ≤ 1.2× cp: {ingest_row.seconds / cp_s:.2f}× (× cp+sync: {ingest_row.seconds / cp_sync_s:.2f})")
    print(f"re-ingest ≤ 0.3× cp: {reingest_row.seconds / cp_s:.2f}×")
    rss = (ingest_row.peak_rss_mb, reingest_row.peak_rss_mb, export_row.peak_rss_mb)
    print(f"peak RSS ≤ {budget_mb:.0f} MiB: ingest {rss[0]:.0f}, re-ingest {rss[1]:.0f}, export {rss[2]:.0f}")
    if args.json_out:
        args.json_out.write_text(json.dumps({"bytes": total, "largest": largest, "rows": [m.__dict__ for m in rows]}))
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
