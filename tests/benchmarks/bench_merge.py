"""TIES merge of three ≈1 GB models: weightbank vs mergekit (`mergekit-yaml`), in one run.

    python tests/benchmarks/bench_merge.py [--device cpu|cuda] [--layers 9] [--runs 1]

Setup (untimed, in a child process): a Llama-shaped bf16 base (hidden 2048, FFN 5632, GQA 16/4,
vocab 32000; 9 layers ≈ 1.07 GB) and three fine-tunes of it (base + seeded noise), saved with
`save_pretrained`; one mergekit YAML (`ties`, weights 0.5/0.3/0.2, density 0.5, bf16) naming the
four folders. Both tools get that same file. Pairs (each step in its own process; peak RSS of
that process; median of --runs):
  A. `mergekit-yaml merge.yml OUT`        vs  `weightbank compose merge.yml --out OUT`
     (the folders already ingested, as on every run after the first: their hash cache means
     nothing is re-read; the first run, which ingests 4.3 GB, is printed apart)   target < 1×
  B. `mergekit-yaml` then `from_pretrained` + a forward pass   vs  `weightbank.compose(merge.yml,
     device=…)` + a forward pass (mergekit's two processes: times added, RSS the larger)
The two outputs are compared: mergekit computes a bf16 merge in bf16, we in fp32 rounded once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _measure import Measurement, drop_dir, machine, measure, median_of, print_pairs, run_worker

SETUP = """
import sys, torch, yaml
from pathlib import Path
from transformers import AutoModelForCausalLM
from weightbank.composer.tiny_models import make_config
work, layers = Path(sys.argv[1]), int(sys.argv[2])
config = make_config("llama", hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
    num_attention_heads=16, num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(work / "base")
original = {name: p.detach().clone() for name, p in model.named_parameters()}
for number in (1, 2, 3):
    generator = torch.Generator().manual_seed(number)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator).mul_(0.002)
            param.copy_(original[name].float().add_(noise))
    model.save_pretrained(work / f"ft{number}")
weights = {1: 0.5, 2: 0.3, 3: 0.2}
models = [{"model": str(work / "base")}] + [
    {"model": str(work / f"ft{n}"), "parameters": {"weight": w, "density": 0.5}} for n, w in weights.items()]
document = {"merge_method": "ties", "base_model": str(work / "base"), "models": models,
            "parameters": {"normalize": True}, "dtype": "bfloat16"}
(work / "merge.yml").write_text(yaml.safe_dump(document, sort_keys=False))
print(sum(p.numel() * p.element_size() for p in model.parameters()))
"""

COMPARE = """
import sys, torch
from pathlib import Path
from safetensors import safe_open
ours, theirs = Path(sys.argv[1]), Path(sys.argv[2])
def tensors(folder):
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
mine = dict(tensors(ours))
worst, differing, total = 0.0, 0, 0
for name, value in tensors(theirs):
    diff = (mine[name].float() - value.float()).abs()
    worst, differing, total = max(worst, diff.max().item()), differing + int((diff > 0).sum()), total + diff.numel()
print(f"ours vs mergekit (bf16 outputs): max-abs {worst:.3g}, {differing / total:.2%} of {total:,} entries differ")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=9)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-merge-"))
    work.mkdir(parents=True, exist_ok=True)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP, str(work), str(args.layers)], check=True, capture_output=True, text=True
    )
    size = int(setup.stdout.strip().splitlines()[-1])
    config, store, out, theirs = work / "merge.yml", str(work / "store"), str(work / "out"), str(work / "mergekit")
    weightbank = [sys.executable, "-m", "weightbank", "--store", store, "-q"]
    mergekit = ["mergekit-yaml", str(config), theirs, "--quiet", "--no-copy-tokenizer", "--no-write-model-card"]
    if args.device == "cuda":
        mergekit.append("--cuda")

    def fresh(folder: str, argv: list[str]) -> Measurement:
        drop_dir(folder)
        return measure("", argv)

    first = fresh(out, [*weightbank, "compose", str(config), "--out", out])
    ours_out = median_of(
        args.runs, "compose merge.yml --out", lambda: fresh(out, [*weightbank, "compose", str(config), "--out", out])
    )
    peer_out = median_of(args.runs, "mergekit-yaml", lambda: fresh(theirs, mergekit))
    peer_load = median_of(args.runs, "", lambda: run_worker("", "from_pretrained", args.device, "bfloat16", theirs))
    peer_device = Measurement(
        "mergekit-yaml + from_pretrained",
        peer_out.seconds + peer_load.seconds,
        max(peer_out.peak_rss_mb, peer_load.peak_rss_mb),
    )
    spec = json.dumps(str(config))
    ours_device = median_of(
        args.runs, f"compose(merge.yml, {args.device})",
        lambda: run_worker("", "compose", args.device, "bfloat16", store, spec),
    )  # fmt: skip
    comparison = subprocess.run(
        [sys.executable, "-c", COMPARE, out, theirs], check=True, capture_output=True, text=True
    )

    print(f"\nmachine: {machine()}; device {args.device}, dtype bfloat16, median of {args.runs}")
    print(f"models: 4 × {size / 1e9:.2f} GB (base + 3 fine-tunes), TIES density 0.5")
    print_pairs([(peer_out, ours_out, 1.0), (peer_device, ours_device, 1.0)])
    print(f"first run, folders ingested on the fly: {first.seconds:.2f} s, {first.peak_rss_mb:.0f} MiB")
    print(comparison.stdout.strip())
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
