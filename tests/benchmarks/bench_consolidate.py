"""consolidate (EMA over 5 versions) vs a plain torch script averaging 5 exported folders.

    flock /tmp/wb-bench.lock python tests/benchmarks/bench_consolidate.py [--layers 9] [--runs 3]
    flock /tmp/wb-bench.lock python tests/benchmarks/bench_consolidate.py --small-layers 5700

The ≈1 GB benchmark Llama of bench_compose.py (bfloat16), 5 versions, each changing ≈10 % of
the tensors (a fresh random pick per version), ingested as versions of one ref. Pairs (each
in its own process, timed end to end including imports, peak RSS of that process):
  weightbank consolidate m --ema 0.9 --versions 1..5     vs  torch: load the 5 exported
  folders (safetensors), EMA in float32, save the result as one safetensors file.
Also: bytes stored for the result (ours: only tensors that differ from an existing object),
the command's own plan / compute / publish times, and a `--dry-run` (planning only).

`--small-layers N` makes a narrow Llama with N layers instead (9 tensors a layer: 5,700
layers ≈ 51k small tensors), to set our per-tensor bookkeeping against SleepTime's quoted
"< 10 ms for 51k small nodes".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import Measurement, drop_dir, machine, measure

SETUP = """
import json, random, shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from weightbank.composer.tiny_models import make_config
from weightbank.registry import Registry
work, layers, small = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "small"
size = dict(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1, vocab_size=32) \\
    if small else dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=4,
                       vocab_size=32000)
config = make_config("llama", num_hidden_layers=layers, max_position_embeddings=2048, **size)
torch.manual_seed(0)
AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(work / "v1", max_shard_size="20GB")
registry = Registry(work / "store")
registry.ingest(work / "v1", "m")
tensors = load_file(work / "v1" / "model.safetensors")
names = sorted(tensors)
rng = random.Random(0)
for version in range(2, 6):
    folder = work / f"v{version}"
    shutil.copytree(work / f"v{version - 1}", folder)
    for name in rng.sample(names, max(1, len(names) // 10)):
        tensors[name] = (tensors[name].float() + 0.01 * torch.randn(tensors[name].shape)).to(torch.bfloat16)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    registry.ingest(folder, "m")
total = sum(t.numel() * t.element_size() for t in tensors.values())
print(json.dumps({"total": total, "tensors": len(names)}))
"""

PEER = """
import shutil, sys, torch
from pathlib import Path
from safetensors.torch import load_file, save_file
*folders, out, decay = sys.argv[1:]
decay = float(decay)
average = None
for folder in map(Path, folders):
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    if average is None:
        average = {name: value.float() for name, value in tensors.items()}
    else:
        for name, value in tensors.items():
            average[name].mul_(decay).add_(value.float(), alpha=1 - decay)
    del tensors
out = Path(out)
out.mkdir()
save_file({name: value.to(torch.bfloat16) for name, value in average.items()}, out / "model.safetensors",
          metadata={"format": "pt"})
shutil.copy(Path(folders[-1]) / "config.json", out / "config.json")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--small-layers", type=int, help="A narrow Llama with this many layers (many small tensors).")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-consolidate-"))
    work.mkdir(parents=True, exist_ok=True)
    small = args.small_layers is not None
    layers = str(args.small_layers if small else args.layers)
    setup = subprocess.run([sys.executable, "-c", SETUP, str(work), layers, "small" if small else "full"],
                           check=True, capture_output=True, text=True)  # fmt: skip
    sizes = json.loads(setup.stdout.strip().splitlines()[-1])
    store, out, report = str(work / "store"), work / "peer-out", work / "ours.json"
    folders = [str(work / f"v{v}") for v in range(1, 6)]
    wb = [sys.executable, "-m", "weightbank", "--store", store, "-q"]
    ema = ["--ema", "0.9", "--versions", "1..5", "--as", "ema", "-m", "bench", "--json"]

    peers, ours, reports, peer_bytes = [], [], [], 0
    for _ in range(1 if small else args.runs):
        peers.append(
            measure("torch: load 5 folders + EMA + save", [sys.executable, "-c", PEER, *folders, str(out), "0.9"])
        )
        peer_bytes = sum(f.stat().st_size for f in out.iterdir())
        drop_dir(str(out))
        ours.append(measure("weightbank consolidate --ema", [*wb, "consolidate", "m", *ema], stdout=report))
        reports.append(json.loads(report.read_text()))
        drop_dir(str(work / "store" / "refs" / "ema"))  # a fresh ref (and fresh objects) for every run
        subprocess.run([*wb, "gc", "--grace", "0"], check=True, capture_output=True)
    dry = measure("dry", [*wb, "consolidate", "m", *ema, "--dry-run"], stdout=work / "dry.json")
    planned = json.loads((work / "dry.json").read_text())
    peer, mine = _median(peers), _median(ours)
    result = reports[ours.index(min(ours, key=lambda m: abs(m.seconds - mine.seconds)))]

    print(f"\nmachine: {machine()}")
    kind = f"{layers}-layer narrow Llama" if small else f"{layers}-layer Llama (bfloat16)"
    print(f"model: {kind}, {sizes['total'] / 1e9:.3f} GB, {sizes['tensors']} tensors; 5 versions, ≈10 % changed each")
    print(f"{'':<40}{'s':>8}{'peak RSS MiB':>14}")
    for m in (peer, mine):
        print(f"{m.label:<40}{m.seconds:>8.2f}{m.peak_rss_mb:>14.0f}")
    ratios = f"{mine.seconds / peer.seconds:>8.2f}{mine.peak_rss_mb / peer.peak_rss_mb:>14.2f}"
    print(f"{'ratio (weightbank / torch)':<40}{ratios}")
    stored = result["bytes_stored"]
    print(f"bytes stored for the result: weightbank {stored / 2**20:.1f} MiB ({result['new_objects']} new objects, "
          f"{result['unchanged']} tensors reused by digest) vs torch {peer_bytes / 2**20:.1f} MiB "
          f"(ratio {stored / peer_bytes:.2f})")  # fmt: skip
    times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result["seconds"].items())
    plan, count = planned["seconds"]["plan"], sizes["tensors"]
    print(f"consolidate's own times: {times}; --dry-run: process {dry.seconds:.2f} s, plan {plan * 1000:.0f} ms "
          f"({plan * 1e6 / count:.0f} µs a tensor; {result['computed']} of {count} computed)")  # fmt: skip
    if args.workdir is None:
        drop_dir(str(work))


def _median(runs: list[Measurement]) -> Measurement:
    ordered = sorted(runs, key=lambda m: m.seconds)
    return Measurement(runs[0].label, ordered[len(ordered) // 2].seconds, max(m.peak_rss_mb for m in runs))


if __name__ == "__main__":
    main()
