"""PRISM bridge fit d_A = 2048 → d_B = 1536 from 200k correlated rows: weightbank's streamed
fit vs `torch.linalg.lstsq` on the full matrix (and scikit-learn `Ridge` if installed), then
the bridge's forward throughput vs a dense `nn.Linear`, and what a refit stores.

    flock /tmp/wb-bench.lock python tests/benchmarks/bench_prism.py [--rows 200000] [--tiles 16]

Setup (untimed) writes X [N, d_A] and Z = X·Wᵀ + b + noise [N, d_B] (float32 safetensors;
X has a shared factor and mixed columns, so its columns are strongly correlated). Each fit
runs in its own process (wall time, the child's own peak RSS): `weightbank prism fit --x --z`
streams row batches into float64 normal equations; the peer loads both matrices and solves
the centred least-squares problem on the full matrix. R² is over all N rows for both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _measure import Measurement, drop_dir, machine, measure

SETUP = """
import sys, torch
from safetensors.torch import save_file
rows, d_a, d_b, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
g = torch.Generator().manual_seed(0)
mixing = torch.randn(d_a, d_a, generator=g) * (0.3 / d_a**0.5) + torch.eye(d_a)
weight, bias = torch.randn(d_b, d_a, generator=g) / d_a**0.5, torch.randn(d_b, generator=g)
x, z = torch.empty(rows, d_a), torch.empty(rows, d_b)
for start in range(0, rows, 8192):
    stop = min(start + 8192, rows)
    block = torch.randn(stop - start, d_a, generator=g) @ mixing
    block += 0.9 * torch.randn(stop - start, 1, generator=g) + 2.0
    x[start:stop] = block
    z[start:stop] = block @ weight.T + bias + 0.1 * torch.randn(stop - start, d_b, generator=g)
save_file({"x": x}, f"{out}/x.safetensors")
save_file({"z": z}, f"{out}/z.safetensors")
"""


def worker_lstsq(x_path: str, z_path: str) -> None:
    """The peer: both matrices in memory, centred (the intercept), torch.linalg.lstsq by QR
    (`gels`: X has full rank). Its default CPU driver, `gelsy`, drops every direction below
    eps·max(N, d) ≈ 2.4% of the largest singular value for N = 200k: R² 0.84 here."""
    import torch
    from safetensors.torch import load_file, save_file

    x, z = load_file(x_path)["x"], load_file(z_path)["z"]
    start = time.perf_counter()
    x -= x.mean(0)
    z -= z.mean(0)
    solution = torch.linalg.lstsq(x, z, driver="gels").solution
    seconds = time.perf_counter() - start
    save_file({"w": solution.T.contiguous()}, str(Path(x_path).with_name("w-lstsq.safetensors")))
    residual = z - x @ solution
    r2 = 1 - float(residual.double().square().sum() / z.double().square().sum())
    print(json.dumps({"solve_seconds": seconds, "r2": r2}))


def worker_sklearn(x_path: str, z_path: str, alpha: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from sklearn.linear_model import Ridge

    x, z = load_file(x_path)["x"].numpy(), load_file(z_path)["z"].numpy()
    start = time.perf_counter()
    model = Ridge(alpha=float(alpha)).fit(x, z)
    seconds = time.perf_counter() - start
    save_file({"w": torch.from_numpy(model.coef_).contiguous()}, str(Path(x_path).with_name("w-sklearn.safetensors")))
    # R² pooled over the outputs, as weightbank reports it (sklearn's score averages per output).
    residual = ((z - model.predict(x)).astype("float64") ** 2).sum()
    print(json.dumps({"solve_seconds": seconds, "r2": 1 - residual / ((z - z.mean(0)).astype("float64") ** 2).sum()}))


def run_json(label: str, argv: list[str], out: Path) -> tuple[Measurement, dict]:
    measured = measure(label, argv, stdout=out)
    return measured, json.loads(out.read_text())


def throughput(store: Path, rows: int, repeats: int) -> dict[str, float | bool]:
    """Rows/s of the bridge module, a dense nn.Linear of the same W, and a per-tile einsum."""
    import torch

    import weightbank

    bridge = weightbank.load_bridge("bench", store=str(store))
    linear = torch.nn.Linear(bridge.in_features, bridge.out_features)
    with torch.no_grad():
        linear.weight.copy_(bridge.weight)
        linear.bias.copy_(bridge.bias)
    grid, tiles = bridge.grid, bridge.tiles()
    blocks = tiles.reshape(grid.rows, grid.cols, grid.tile_rows, grid.tile_cols)
    x = torch.randn(rows, bridge.in_features)

    def tilewise(batch: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(batch, (0, grid.padding[1])).reshape(len(batch), grid.cols, grid.tile_cols)
        out = torch.einsum("nct,rcst->nrs", padded, blocks).reshape(len(batch), -1)
        return out[:, : grid.out_features] + bridge.bias

    applies = {"bridge": bridge, "linear": linear, "tilewise": tilewise}
    times: dict[str, list[float]] = {key: [] for key in applies}
    with torch.no_grad():
        for _ in range(repeats):  # interleaved, so that load on the machine hits all three alike
            for key, apply in applies.items():
                start = time.perf_counter()
                apply(x)
                times[key].append(time.perf_counter() - start)
    rates = {key: rows / statistics.median(values[1:]) for key, values in times.items()}
    with torch.no_grad():
        equal = torch.equal(bridge(x), linear(x))
        tile_error = float((tilewise(x) - linear(x)).abs().max())
    return {**rates, "bit_equal": equal, "tilewise_max_abs": tile_error}  # fmt: skip


def layout_costs(store: Path, tiles_count: int) -> dict[str, float]:
    """Load (verify + read) the one grid object vs the same tiles stored as T objects."""
    import torch

    from weightbank.composer.executor import Executor
    from weightbank.composer.write import tensor_bytes
    from weightbank.registry.store import Store

    real = Store(store)
    grid_digest = real.bank("bench").tensors["grid"].digest
    start = time.perf_counter()
    tiles = Executor(real, "cpu").load(grid_digest, torch.device("cpu"))
    one = time.perf_counter() - start
    scratch = Store(store.parent / "per-tile-store")
    digests = []
    with scratch.backend.batch():
        for tile in tiles:
            tile = tile.contiguous()
            digests.append(scratch.objects.put_tensor("F32", tuple(tile.shape), tensor_bytes(tile)).digest)
    start = time.perf_counter()
    executor = Executor(scratch, "cpu")
    torch.stack([executor.load(d, torch.device("cpu")) for d in digests])
    many = time.perf_counter() - start
    return {"one_object_s": one, "per_tile_s": many, "grid_bytes": tiles.numel() * 4,
            "tile_bytes": tiles[0].numel() * 4, "tiles": tiles_count}  # fmt: skip


def weight_gaps(store: Path, work: Path) -> dict[str, float]:
    """max |W_peer − W| / max |W| against weightbank's float64 solve (stored in float32)."""
    from safetensors.torch import load_file

    import weightbank

    ours = weightbank.load_bridge("bench@v1", store=str(store)).weight.double()
    gaps = {}
    for peer in ("lstsq", "sklearn"):
        path = work / f"w-{peer}.safetensors"
        if path.exists():
            gaps[peer] = float((load_file(str(path))["w"].double() - ours).abs().max() / ours.abs().max())
    return gaps


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "objects").rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--d-a", type=int, default=2048)
    parser.add_argument("--d-b", type=int, default=1536)
    parser.add_argument("--tiles", type=int, default=16)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        {"lstsq": worker_lstsq, "sklearn": worker_sklearn}[args.worker[0]](*args.worker[1:])
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="wb-bench-prism-"))
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", SETUP, str(args.rows), str(args.d_a), str(args.d_b), str(work)], check=True)
    x, z, store = str(work / "x.safetensors"), str(work / "z.safetensors"), work / "store"
    wb = [sys.executable, "-m", "weightbank", "--store", str(store), "-q", "prism"]

    ours, fitted = run_json("weightbank prism fit (streamed)",
                            [*wb, "fit", "--name", "bench", "--x", x, "--z", z, "--tiles", str(args.tiles),
                             "--holdout", "0", "--json"], work / "fit.json")  # fmt: skip
    report = fitted["grid"]["fit"]
    me = Path(__file__).resolve()
    peer, solved = run_json("torch.linalg.lstsq (full X, gels)", [sys.executable, str(me), "--worker", "lstsq", x, z],
                            work / "lstsq.json")  # fmt: skip
    try:
        import sklearn  # noqa: F401

        ridge = run_json("sklearn Ridge", [sys.executable, str(me), "--worker", "sklearn", x, z, "1e-6"],
                         work / "sklearn.json")  # fmt: skip
    except ImportError:
        ridge = None
    before = store_bytes(store)
    refit_run, refitted = run_json("weightbank prism refit (1 tile)",
                                   [*wb, "refit", "bench", "--tiles", "0", "--x", x, "--z", z, "--holdout", "0",
                                    "--json"], work / "refit.json")  # fmt: skip
    refit_bytes = store_bytes(store) - before
    gaps = weight_gaps(store, work)
    speeds = throughput(store, 8192, 21)
    layout = layout_costs(store, fitted["grid"]["tiles"])

    print(f"\nmachine: {machine()}")
    print("ΔW (rel): max |W_peer − W| / max |W| against weightbank's float64 solve")
    print(f"data: N = {args.rows:,} rows, d_A = {args.d_a} → d_B = {args.d_b}, float32; grid "
          f"{fitted['grid']['rows']}x{fitted['grid']['cols']} ({args.tiles} tiles)")  # fmt: skip
    print(f"\n{'fit':<34}{'s':>8}{'RSS MiB':>9}{'R²':>12}{'vs lstsq s':>12}{'ΔW (rel)':>10}")
    rows = [(ours, report["train"]["r2"], "-"), (peer, solved["r2"], f"{gaps['lstsq']:.1e}")]
    if ridge is not None:
        rows.append((ridge[0], ridge[1]["r2"], f"{gaps['sklearn']:.1e}"))
    for measured, r2, gap in rows:
        print(f"{measured.label:<34}{measured.seconds:>8.2f}{measured.peak_rss_mb:>9.0f}{r2:>12.6f}"
              f"{measured.seconds / peer.seconds:>12.2f}{gap:>10}")  # fmt: skip
    if ridge is None:
        print(f"{'sklearn Ridge':<34}{'not installed: skipped':>41}")
    tiles = report["independent_tiles"]
    print(f"{'independent tiles (seed design)':<34}{'':>17}{tiles['summed']['r2']:>12.6f}  summed; "
          f"{tiles['averaged']['r2']:.6f} averaged")  # fmt: skip
    print(f"weightbank: collect {report['seconds']['collect']:.2f} s + solve {report['seconds']['solve']:.2f} s + "
          f"report {report['seconds']['report']:.2f} s, "
          f"{report['samples_per_second']:,.0f} rows/s; dense-lstsq R² on the same moments "
          f"{report['dense_lstsq']['r2']:.6f}; condition number {report['condition_number']:.3g}; "
          f"peer solve alone {solved['solve_seconds']:.2f} s")  # fmt: skip
    after = refitted["refit"]["after"]["train"]["r2"]
    print(f"refit of 1 tile: {refit_run.seconds:.2f} s, R² {refitted['refit']['before']['train']['r2']:.6f} → "
          f"{after:.6f}; new object bytes {refit_bytes:,} (a per-tile layout would add "
          f"{layout['tile_bytes']:,} + header)")  # fmt: skip
    print(f"load + verify the grid: one [T, r, c] object {layout['one_object_s'] * 1e3:.1f} ms vs "
          f"{layout['tiles']} per-tile objects {layout['per_tile_s'] * 1e3:.1f} ms")  # fmt: skip
    print(f"\nforward, 8192 rows: bridge {speeds['bridge']:,.0f} rows/s, nn.Linear {speeds['linear']:,.0f} rows/s "
          f"(ratio {speeds['bridge'] / speeds['linear']:.2f}, bit-equal: {speeds['bit_equal']}); per-tile einsum "
          f"{speeds['tilewise']:,.0f} rows/s (max |Δ| {speeds['tilewise_max_abs']:.1e})")  # fmt: skip
    if args.workdir is None:
        drop_dir(str(work))


if __name__ == "__main__":
    main()
