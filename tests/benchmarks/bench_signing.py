"""Signing: `sign` and `audit --require-signed` at two model sizes, and `export --sign` vs `export`.

    flock /tmp/wb-bench.lock python tests/benchmarks/bench_signing.py [--layers 9] [--runs 3]

Signing a bank and checking it under a trust policy read the manifest only (its digest names
every object), so they should take milliseconds whatever the model's size; the benchmark
shows both for two Llamas with the same tensors (--layers layers, so the same manifest shape)
and ~800× apart in bytes: the bf16 Llama of `bench_ingest.py` (9 layers ≈ 1.07 GB) and the
tiny Llama of the tests with as many layers (≈ 1.4 MB). `audit` re-hashes every object, so
`audit --require-signed` is timed beside plain `audit` (the difference is the policy's share).
`export --sign` adds OpenSSF model-signing's SHA-256 pass over the folder; it is timed beside
plain `export`, and model-signing's own CLI signing the exported folder is the peer for that
extra pass, all in the same run.

Every CLI step is a fresh process (wall time includes Python's start-up and imports); the
in-process rows time the Python API call alone, after imports. Medians of --runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers

from bench_ingest import make_model

from _measure import Measurement, drop_dir, machine, measure, median_of
from helpers import write_key_pair

TINY_MODEL = """
import sys
from weightbank.composer.tiny_models import save_tiny_model
save_tiny_model("llama", sys.argv[1], num_hidden_layers=int(sys.argv[2]))
"""
IN_PROCESS = """
import json, sys, time
from weightbank.registry import Registry
store, keys, trusted = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
reg = Registry(store)
sign = []
for key in keys:  # a new signer each time: every run writes a signature
    start = time.perf_counter(); reg.sign("big", key); sign.append(time.perf_counter() - start)
policy = reg.trust_policy([trusted])
check = []
for _ in keys:
    start = time.perf_counter(); reg.require_signed(["big"], policy); check.append(time.perf_counter() - start)
print(json.dumps({"sign": sorted(sign)[len(sign) // 2], "check": sorted(check)[len(check) // 2]}))
"""


def in_process(store: Path, keys: list[Path], trusted: Path) -> dict[str, float]:
    """Median seconds of `Registry.sign` (a new key each time) and of the trust check, after imports."""
    out = subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(store), ",".join(map(str, keys)), str(trusted)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def make_tiny_model(folder: Path, layers: int) -> None:
    """The tests' tiny Llama with `layers` layers, made in a child process."""
    subprocess.run([sys.executable, "-c", TINY_MODEL, str(folder), str(layers)], check=True, capture_output=True)


def measure_size(work: Path, name: str, runs: int, trusted: tuple[Path, Path]) -> tuple[str, int, list[str]]:
    """Ingest the model folder `work/name`; time sign and audit (with and without the policy).
    Returns the result line, the model's bytes and the weightbank command for its store."""
    source, store = work / name, work / f"store-{name}"
    total = sum(path.stat().st_size for path in source.glob("*.safetensors"))
    wb = [sys.executable, "-m", "weightbank", "--quiet", "--store", str(store)]
    measure("ingest (untimed setup)", [*wb, "ingest", str(source), "--name", "big"])
    shown = subprocess.run([*wb, "show", "big", "--json"], check=True, capture_output=True, text=True).stdout
    tensors = len(json.loads(shown)["manifest"]["tensors"])
    drop_dir(str(source))
    signers = iter([write_key_pair(work / "keys", f"s-{name}-{n}")[0] for n in range(runs)])
    sign = median_of(runs, "sign", lambda: measure("sign", [*wb, "sign", "big", "--key", str(next(signers))]))
    measure("sign (trusted key)", [*wb, "sign", "big", "--key", str(trusted[0])])
    policy = [*wb, "audit", "big", "--require-signed", "--trusted-key", str(trusted[1])]
    audit = median_of(runs, "audit", lambda: measure("audit", [*wb, "audit", "big"]))
    audit_signed = median_of(runs, "audit --require-signed", lambda: measure("audit --require-signed", policy))
    api = in_process(store, [write_key_pair(work / "keys", f"a-{name}-{n}")[0] for n in range(5)], trusted[1])
    line = (
        f"{total / 1e9:>7.4f} GB, {tensors} tensors: sign {sign.seconds:.3f} s (API {api['sign'] * 1e3:.2f} ms); "
        f"trust check (API) {api['check'] * 1e3:.2f} ms; audit {audit.seconds:.2f} s, audit --require-signed "
        f"{audit_signed.seconds:.2f} s ({audit_signed.seconds - audit.seconds:+.3f} s)"
    )
    return line, total, wb


def measure_export(wb: list[str], out: Path, runs: int, key: Path) -> list[Measurement]:
    """export, export --sign, and model-signing's CLI signing the exported folder (the peer)."""
    plain = median_of(runs, "export", lambda: measure("export", [*wb, "export", "big", str(out)]),
                      lambda: drop_dir(str(out)))  # fmt: skip
    signed_argv = [*wb, "export", "big", str(out), "--sign", str(key)]
    signed = median_of(runs, "export --sign", lambda: measure("export --sign", signed_argv), lambda: drop_dir(str(out)))
    measure("export (untimed, for the peer)", [*wb, "export", "big", str(out)])
    peer_argv = [sys.executable, "-m", "model_signing", "sign", "key", "--private_key", str(key),
                 "--signature", str(out / "model.sig"), str(out)]  # fmt: skip
    return [plain, signed, median_of(runs, "model_signing sign key", lambda: measure("peer", peer_argv))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=9, help="layers of both models (9: the big one ≈ 1.07 GB)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-signing-"))
    trusted = write_key_pair(work / "keys", "release")
    make_tiny_model(work / "tiny", args.layers)
    make_model(work / "big", args.layers)
    tiny_line, _, _ = measure_size(work, "tiny", args.runs, trusted)
    big_line, total, wb = measure_size(work, "big", args.runs, trusted)
    plain, signed, peer = measure_export(wb, work / "exported", args.runs, trusted[0])
    print(f"machine: {machine()}")
    print(tiny_line)
    print(big_line)
    extra = signed.seconds - plain.seconds
    print(f"export of {total / 1e9:.2f} GB: {plain.seconds:.2f} s; export --sign {signed.seconds:.2f} s "
          f"({signed.seconds / plain.seconds:.2f}×, +{extra:.2f} s); model-signing's CLI signing the exported "
          f"folder {peer.seconds:.2f} s (extra / peer = {extra / peer.seconds:.2f})")  # fmt: skip
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
