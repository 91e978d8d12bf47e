"""push / pull of a ≥1 GB base and an adapter to S3 (moto on loopback) vs plain s3fs put / get.

    python tests/benchmarks/bench_remote.py [--workdir DIR] [--layers 9] [--runs 3] [--jobs 8]

A moto S3 server runs in its own process on 127.0.0.1; every step is a separate process
(timed, peak RSS) and the median of --runs. The peer is s3fs moving the same model folder,
`S3FileSystem().put(folder, …, recursive=True)` and `.get(…)`; `get && sync` is the
like-for-like peer of a pull, which makes every object durable before naming it.
Targets (issue 6): new-adapter push ≤ 1.01× the adapter's own bytes; re-push sends 0 object
bytes; pull of the base ≤ 1.2× the plain s3fs get.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_ingest import make_model

from _measure import Measurement, drop_dir, machine, measure, median_of

MOTO = """
import logging, time
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
time.sleep(10**9)
"""
S3FS = "import s3fs, sys; getattr(s3fs.S3FileSystem(), sys.argv[1])(sys.argv[2], sys.argv[3], recursive=True)"
MAKE_BUCKET = "import boto3; boto3.client('s3').create_bucket(Bucket='bench')"
MAKE_LORA = """
import sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
config = LoraConfig(r=16, lora_alpha=32, target_modules=targets, init_lora_weights=False)
get_peft_model(model, config).save_pretrained(sys.argv[2])
"""


def start_moto() -> subprocess.Popen[str]:
    """The S3 server in its own process; the standard AWS variables point every child at it."""
    server = subprocess.Popen([sys.executable, "-c", MOTO], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    port = int(server.stdout.readline())
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_DEFAULT_REGION="us-east-1")
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    subprocess.run([sys.executable, "-c", MAKE_BUCKET], check=True)
    return server


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def own_bytes(store: Path, ref: str) -> int:
    """A bank's own objects and manifest: what a push must send to a remote that has its base."""
    from weightbank.registry import Store

    local = Store(store)
    bank = local.bank(ref)
    return sum(local.objects.size(d) for d in bank.object_digests()) + len(local.manifests.read_bytes(bank.digest))


class Steps:
    """The measured steps; weightbank's `--json` results are kept by label."""

    def __init__(self, work: Path, jobs: int) -> None:
        self.work = work
        self.wb = [sys.executable, "-m", "weightbank", "--quiet"]
        self.jobs = ["--jobs", str(jobs)]
        self.results: dict[str, dict] = {}
        self.fresh = (f"bench/run-{n}" for n in itertools.count())

    def weightbank(self, label: str, store: Path, *args: str) -> Measurement:
        out = self.work / "result.json"
        measured = measure(label, [*self.wb, "--store", str(store), *args, *self.jobs, "--json"], stdout=out)
        self.results[label] = json.loads(out.read_text())
        return measured

    def s3fs(self, label: str, verb: str, source: str, target: str, then_sync: bool = False) -> Measurement:
        command = [sys.executable, "-c", S3FS, verb, source, target]
        if then_sync:
            command = ["sh", "-c", f"{shlex.join(command)} && sync"]
        return measure(label, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=9, help="9 layers ≈ 1.1 GB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-remote-"))
    work.mkdir(parents=True, exist_ok=True)
    model, lora, store, pulled, got = (work / name for name in ("model", "lora", "store", "pulled", "got"))
    total, _largest = make_model(model, args.layers)
    subprocess.run([sys.executable, "-c", MAKE_LORA, str(model), str(lora)], check=True, capture_output=True)
    steps = Steps(work, args.jobs)
    for folder, name, base in ((model, "base", ()), (lora, "lora", ("--base", "base"))):
        subprocess.run([*steps.wb, "--store", str(store), "ingest", str(folder), "--name", name, *base], check=True)
    server = start_moto()

    def fresh_put() -> Measurement:
        return steps.s3fs("s3fs put", "put", str(model), next(steps.fresh))

    def fresh_push() -> Measurement:
        return steps.weightbank("push base", store, "push", f"s3://{next(steps.fresh)}", "base")

    def get(then_sync: bool = False) -> Measurement:
        return steps.s3fs("s3fs get" + " && sync" * then_sync, "get", "bench/plain", str(got), then_sync)

    def pull() -> Measurement:
        return steps.weightbank("pull base", pulled, "pull", "s3://bench/wb", "base")

    try:
        rows = [median_of(args.runs, "s3fs put", fresh_put)]
        rows.append(median_of(args.runs, "push base", fresh_push))
        steps.s3fs("setup", "put", str(model), "bench/plain")
        steps.weightbank("setup", store, "push", "s3://bench/wb", "base")
        rows.append(median_of(args.runs, "s3fs get", get, lambda: drop_dir(str(got))))
        rows.append(median_of(args.runs, "s3fs get && sync", lambda: get(then_sync=True), lambda: drop_dir(str(got))))
        rows.append(median_of(args.runs, "pull base", pull, lambda: drop_dir(str(pulled))))
        rows.append(steps.weightbank("push adapter", store, "push", "s3://bench/wb", "lora"))
        rows.append(steps.weightbank("re-push base + adapter", store, "push", "s3://bench/wb", "base", "lora"))
    finally:
        server.kill()
    report(rows, steps.results, total, folder_bytes(model), own_bytes(store, "lora"), args.jobs)
    if args.workdir is None:
        drop_dir(str(work))


def report(rows: list[Measurement], results: dict[str, dict], total: int, folder: int, adapter: int, jobs: int) -> None:
    seconds = {m.label: m.seconds for m in rows}
    print(f"\nmachine: {machine()}; S3: moto server on loopback; --jobs {jobs}")
    print(f"model: {total / 1e9:.2f} GB bf16 Llama ({folder / 1e9:.2f} GB folder); adapter {adapter / 2**20:.1f} MiB")
    print(f"{'step':<24}{'seconds':>9}{'peak RSS MiB':>14}{'bytes sent':>15}")
    for m in rows:
        sent = results.get(m.label, {}).get("bytes", "")
        print(f"{m.label:<24}{m.seconds:>9.2f}{m.peak_rss_mb:>14.0f}{sent:>15}")
    pushed, new, again = results["push base"], results["push adapter"], results["re-push base + adapter"]
    push = seconds["push base"] / seconds["s3fs put"]
    print(f"push base: {push:.2f}× s3fs put ({pushed['bytes']} bytes sent, the folder is {folder})")
    print(f"new-adapter push ≤ 1.01× its bytes: {new['bytes'] / adapter:.4f}× ({new['bytes']} of {adapter} bytes)")
    print(f"re-push sends 0 object bytes: {again['object_bytes']} ({again['bytes']} bytes in all)")
    pull, get, get_sync = seconds["pull base"], seconds["s3fs get"], seconds["s3fs get && sync"]
    print(f"pull base ≤ 1.2× s3fs get: {pull / get:.2f}× (× get && sync: {pull / get_sync:.2f})")


if __name__ == "__main__":
    main()
