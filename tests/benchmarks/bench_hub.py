"""`ingest hf://` of a ≈1 GB model vs `snapshot_download` + local ingest, and `export hf://` vs
`upload_folder` of an exported folder, against the Hub double (`tests/hub_server.py`), in one run.

    python tests/benchmarks/bench_hub.py [--workdir DIR] [--layers 9] [--runs 3]

The double runs in its own process on 127.0.0.1 and counts what crosses the wire (payload bytes
served by `resolve`, LFS and commit bytes received). Every step is a separate process (timed,
peak RSS), the median of --runs; each run starts from an empty store, download folder or repo.
Peak disk is sampled every 20 ms over what the step writes: the store and the step's TMPDIR for
weightbank; the download folder (with huggingface_hub's metadata) plus the store for the peer of
ingest; for the peer of publish, the exported folder it needs on disk before uploading.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_ingest import make_model

from _measure import Measurement, drop_dir, machine, measure

DOUBLE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from hub_server import HubDouble
double = HubDouble().start()
print(double.url, flush=True)
for _ in sys.stdin:  # each line asks for the counters
    with double.lock:
        served = sum(read.end - read.start for read in double.reads)
        received = double.lfs_bytes + double.regular_bytes
        counters = {"served": served, "requests": len(double.reads), "received": received}
    print(json.dumps(counters), flush=True)
"""
UPLOAD = """
import sys
from huggingface_hub import HfApi
HfApi().create_repo(sys.argv[2])
HfApi().upload_folder(folder_path=sys.argv[1], repo_id=sys.argv[2])
"""
SNAPSHOT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2])
"""


class Double:
    """The Hub double in its own process; `counters()` reads what crossed the wire so far."""

    def __init__(self) -> None:
        tests = str(Path(__file__).resolve().parents[1])
        self.process = subprocess.Popen(
            [sys.executable, "-c", DOUBLE, tests], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def counters(self) -> dict[str, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.kill()


def folder_size(*paths: Path) -> int:
    total = 0
    for path in paths:
        for folder, _dirs, files in os.walk(path):
            for name in files:
                try:
                    total += os.lstat(os.path.join(folder, name)).st_size
                except FileNotFoundError:
                    continue
    return total


@contextmanager
def peak_disk(*paths: Path) -> Iterator[list[int]]:
    """Sample the bytes under `paths` every 20 ms while the block runs; `[peak]` once it is done."""
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], folder_size(*paths))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], folder_size(*paths))


class Row:
    """One measured step: seconds, peak RSS, bytes over the wire, peak disk (medians of the runs)."""

    def __init__(self, label: str, runs: list[tuple[Measurement, int, int]]) -> None:
        runs.sort(key=lambda run: run[0].seconds)
        middle = runs[len(runs) // 2]
        self.label, self.seconds = label, middle[0].seconds
        self.rss = max(run[0].peak_rss_mb for run in runs)
        self.wire, self.disk = middle[1], max(run[2] for run in runs)


class Bench:
    def __init__(self, work: Path, double: Double) -> None:
        self.work, self.double = work, double
        self.wb = [sys.executable, "-m", "weightbank", "--quiet"]
        self.fresh = iter(range(10**6))
        self.tmp = work / "tmp"

    def step(self, label: str, argv: list[str], watch: list[Path], direction: str) -> tuple[Measurement, int, int]:
        """Run one step; (measurement, payload bytes in `direction` — served or received —, peak disk)."""
        drop_dir(str(self.tmp))
        self.tmp.mkdir()
        before = self.double.counters()[direction]
        with peak_disk(*watch, self.tmp) as disk:
            measured = measure(label, argv, env={"TMPDIR": str(self.tmp)})
        return measured, self.double.counters()[direction] - before, disk[0]

    def ingest_hub(self) -> tuple[Measurement, int, int]:
        store = self.work / f"store-{next(self.fresh)}"
        cmd = [*self.wb, "--store", str(store), "ingest", "hf://bench/model", "--name", "m"]
        result = self.step("ingest hf://", cmd, [store], "served")
        drop_dir(str(store))
        return result

    def snapshot_then_ingest(self) -> tuple[tuple[Measurement, int, int], tuple[Measurement, int, int]]:
        n = next(self.fresh)
        folder, store = self.work / f"download-{n}", self.work / f"store-{n}"
        snapshot = [sys.executable, "-c", SNAPSHOT, "bench/model", str(folder)]
        downloaded = self.step("snapshot_download", snapshot, [folder], "served")
        ingest = [*self.wb, "--store", str(store), "ingest", str(folder), "--name", "m"]
        ingested = self.step("ingest (local copy)", ingest, [folder, store], "served")
        drop_dir(str(folder))
        drop_dir(str(store))
        return downloaded, ingested

    def publish(self, store: Path) -> tuple[Measurement, int, int]:
        cmd = [*self.wb, "--store", str(store), "export", "m", f"hf://bench/pub-{next(self.fresh)}", "--create"]
        return self.step("export hf://", cmd, [], "received")

    def export_folder(self, store: Path) -> tuple[tuple[Measurement, int, int], Path]:
        """The local export the peer of publish needs first; the folder is kept for it."""
        folder = self.work / f"exported-{next(self.fresh)}"
        cmd = [*self.wb, "--store", str(store), "export", "m", str(folder)]
        return self.step("export (local folder)", cmd, [folder], "received"), folder

    def upload_folder(self, exported: Path) -> tuple[Measurement, int, int]:
        cmd = [sys.executable, "-c", UPLOAD, str(exported), f"bench/up-{next(self.fresh)}"]
        measured, wire, _ = self.step("upload_folder", cmd, [], "received")
        return measured, wire, folder_size(exported)  # the exported folder must be on disk first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=9, help="9 layers ≈ 1.1 GB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-hub-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    total, _largest = make_model(model, args.layers)
    double = Double()
    os.environ.update(
        HF_ENDPOINT=double.url, HF_TOKEN="hf_bench", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HOME=str(work / "hf-home"),
    )  # fmt: skip
    try:
        subprocess.run([sys.executable, "-c", UPLOAD, str(model), "bench/model"], check=True)
        bench = Bench(work, double)
        pairs = [bench.snapshot_then_ingest() for _ in range(args.runs)]
        rows = [Row("snapshot_download", [p[0] for p in pairs]), Row("ingest (local copy)", [p[1] for p in pairs])]
        rows.append(Row("ingest hf://", [bench.ingest_hub() for _ in range(args.runs)]))
        store = work / "store"
        subprocess.run([*bench.wb, "--store", str(store), "ingest", "hf://bench/model", "--name", "m"], check=True)
        again = [*bench.wb, "--store", str(store), "ingest", "hf://bench/model", "--name", "m"]
        reingests = [bench.step("re-ingest", again, [store], "served") for _ in range(args.runs)]
        rows.append(Row("re-ingest hf://", reingests))
        exports = [bench.export_folder(store) for _ in range(args.runs)]
        rows.append(Row("export (local folder)", [measured for measured, _folder in exports]))
        exported = exports[0][1]
        rows.append(Row("upload_folder (exported)", [bench.upload_folder(exported) for _ in range(args.runs)]))
        rows.append(Row("export hf://", [bench.publish(store) for _ in range(args.runs)]))
    finally:
        double.stop()
    report(rows, total, folder_size(model))
    if args.workdir is None:
        drop_dir(str(work))


def report(rows: list[Row], total: int, folder: int) -> None:
    print(f"\nmachine: {machine()}; Hub: the test double on loopback (LFS, no Xet)")
    print(f"model: {total / 1e9:.2f} GB bf16 Llama ({folder:,} bytes in the folder)")
    print(f"{'step':<26}{'seconds':>9}{'peak RSS MiB':>14}{'bytes on the wire':>19}{'peak disk':>15}")
    for row in rows:
        print(f"{row.label:<26}{row.seconds:>9.2f}{row.rss:>14.0f}{row.wire:>19,}{row.disk:>15,}")
    by = {row.label: row for row in rows}
    download, local, ours = by["snapshot_download"], by["ingest (local copy)"], by["ingest hf://"]
    peer_seconds, peer_disk = download.seconds + local.seconds, max(download.disk, local.disk)
    print(
        f"ingest hf:// vs snapshot_download + ingest: {ours.seconds / peer_seconds:.2f}× the time, "
        f"{ours.wire / download.wire:.3f}× the bytes, {ours.disk / peer_disk:.2f}× the peak disk"
    )
    print(f"re-ingest hf:// reads {by['re-ingest hf://'].wire:,} bytes (headers and small files)")
    export, upload, publish = by["export (local folder)"], by["upload_folder (exported)"], by["export hf://"]
    print(
        f"export hf:// vs upload_folder: {publish.seconds / upload.seconds:.2f}× the time "
        f"({publish.seconds / (export.seconds + upload.seconds):.2f}× export + upload_folder), "
        f"{publish.wire / upload.wire:.3f}× the bytes, {publish.disk / upload.disk:.2f}× the peak disk"
    )


if __name__ == "__main__":
    main()
