"""PRISM bridges on synthetic activations: the fit is least squares (NumPy's lstsq is the
oracle), the stored tile grid is the dense W, backfit and refits behave, bad input is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from safetensors.torch import save_file

from weightbank.composer.prism import ActivationFiles, fit, load_bridge, refit
from weightbank.composer.prism.fit import SideRecord
from weightbank.composer.prism.grid import TileGrid, choose_grid
from weightbank.composer.prism.taps import Tap
from weightbank.registry.store import Store

from helpers import Cli, snapshot

N, D_A = 4096, 96


def correlated(d_b: int, seed: int = 0, rows: int = N, noise: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """X with strongly correlated columns (a shared factor and mixing), Z = X·Wᵀ + b + noise."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(D_A, D_A, generator=g) * 0.3 + torch.eye(D_A)
    x = torch.randn(rows, D_A, generator=g) @ mixing + 0.9 * torch.randn(rows, 1, generator=g) + 2.0
    weight, bias = torch.randn(d_b, D_A, generator=g), torch.randn(d_b, generator=g)
    return x, x @ weight.T + bias + noise * torch.randn(rows, d_b, generator=g)


def write_pairs(folder: Path, x: torch.Tensor, z: torch.Tensor) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"x": x.contiguous()}, folder / "x.safetensors")
    save_file({"z": z.contiguous()}, folder / "z.safetensors")
    return folder / "x.safetensors", folder / "z.safetensors"


def numpy_lstsq(x: torch.Tensor, z: torch.Tensor) -> tuple[np.ndarray, float]:
    """(W [d_B, d_A], R²) of NumPy's dense least squares with an intercept column."""
    design = np.hstack([x.double().numpy(), np.ones((len(x), 1))])
    target = z.double().numpy()
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    residual = ((target - design @ solution) ** 2).sum()
    return solution[:-1].T, 1 - residual / ((target - target.mean(0)) ** 2).sum()


def assert_refused(result: Result, expected: str) -> None:
    """One line on stderr, `error: …` naming the problem, exit status 1."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (expected, result.stderr)
    assert expected in lines[0], (expected, lines[0])


def sides(d_b: int) -> tuple[SideRecord, SideRecord]:
    return SideRecord(Tap("final"), D_A), SideRecord(Tap("embeddings"), d_b)


@pytest.mark.parametrize("d_b", [64, 160])
def test_fit_is_least_squares_and_the_bridge_is_its_dense_map(tmp_path: Path, d_b: int) -> None:
    x, z = correlated(d_b)
    x_path, z_path = write_pairs(tmp_path, x, z)
    store = Store(tmp_path / "store")
    result = fit(store, "bridge", ActivationFiles(x_path, z_path, holdout=0.0, seed=0), sides(d_b), grid="3x5")
    report = result.report
    oracle_weight, oracle_r2 = numpy_lstsq(x, z)
    assert abs(report["train"]["r2"] - oracle_r2) < 1e-3
    assert abs(report["dense_lstsq"]["r2"] - oracle_r2) < 1e-9
    assert report["rows"] == {"train": N, "heldout": 0} and report["heldout"] is None
    # The seed design's per-tile fit is far off on correlated inputs; the report says so.
    assert report["independent_tiles"]["summed"]["r2"] < oracle_r2 - 0.2
    assert report["condition_number"] > 100 and report["warnings"] == []

    bridge = load_bridge("bridge", store=store)
    assert np.allclose(bridge.weight.double().numpy(), oracle_weight, rtol=0, atol=1e-4 * np.abs(oracle_weight).max())
    # Padding (3x5 does not divide 96 or d_B): tiles carry zeros beyond the widths.
    grid = TileGrid(3, 5, d_b, D_A)
    assert result.grid["padding"] == {"rows": grid.padding[0], "cols": grid.padding[1]} != {"rows": 0, "cols": 0}
    assert torch.equal(grid.to_dense(bridge.tiles()), bridge.weight) and bridge.tiles().shape == (15, *grid_shape(grid))
    # The module is one matmul with the dense W: nn.Linear's own result, bit for bit, and
    # X·Wᵀ + b of the float64 solution to float32 rounding.
    linear = torch.nn.Linear(D_A, d_b)
    with torch.no_grad():
        linear.weight.copy_(bridge.weight)
        linear.bias.copy_(bridge.bias)
        assert torch.equal(bridge(x[:256]), linear(x[:256]))
        expected = x[:256].double() @ torch.from_numpy(oracle_weight).T + bridge.bias.double()
        assert torch.allclose(bridge(x[:256]).double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max())


def grid_shape(grid: TileGrid) -> tuple[int, int]:
    return grid.tile_rows, grid.tile_cols


def test_grid_choice_padding_and_backfit_give_the_same_w(tmp_path: Path) -> None:
    assert (choose_grid(1536, 2048, 512).rows, choose_grid(1536, 2048, 512).cols) == (16, 32)
    assert (choose_grid(160, 96, 16).rows, choose_grid(160, 96, 16).cols) == (4, 4)
    x, z = correlated(160, seed=1)
    x_path, z_path = write_pairs(tmp_path, x, z)
    store = Store(tmp_path / "store")
    pairs = ActivationFiles(x_path, z_path, holdout=0.1, seed=3)
    whole = fit(store, "one-tile", pairs, sides(160), grid="1x1")
    padded = fit(store, "padded", pairs, sides(160), grid="3x7")
    backfitted = fit(store, "backfit", pairs, sides(160), grid="3x7", method="backfit")
    w_whole = load_bridge("one-tile", store=store).weight
    # The joint solve does not depend on the grid: same bytes; backfit converges to it.
    assert padded.grid["padding"] == {"rows": 2, "cols": 2}
    assert torch.equal(load_bridge("padded", store=store).weight, w_whole)
    report = backfitted.report
    assert report["converged"] is True and 1 < report["sweeps"] < 500
    w_backfit = load_bridge("backfit", store=store).weight
    assert (w_backfit - w_whole).abs().max() <= 1e-4 * w_whole.abs().max()
    assert abs(report["train"]["r2"] - whole.report["train"]["r2"]) < 1e-9
    assert report["heldout"]["r2"] == pytest.approx(whole.report["heldout"]["r2"], abs=1e-9)
    assert whole.report["rows"]["heldout"] > 300 and whole.report["heldout"]["r2"] > 0.9999


def test_refit_never_raises_the_residual_and_freezes_the_other_tiles(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first = ActivationFiles(*write_pairs(tmp_path / "a", *correlated(64, seed=2)), holdout=0.0, seed=0)
    fit(store, "bridge", first, sides(64), grid="2x3")
    before = load_bridge("bridge", store=store)
    # New data from another map: refitting tiles must lower the residual on it.
    shifted = ActivationFiles(*write_pairs(tmp_path / "b", *correlated(64, seed=5)), holdout=0.0, seed=0)
    result = refit(store, "bridge", [1, 3], shifted)
    after = load_bridge("bridge", store=store)
    assert result.version == 2
    assert result.refit["after"]["train"]["relative_residual"] < result.refit["before"]["train"]["relative_residual"]
    grid = TileGrid(2, 3, 64, D_A)
    changed = {t for t in range(grid.tiles) if not torch.equal(before.tiles()[t], after.tiles()[t])}
    assert changed == {1, 3}
    untouched_rows = [grid.row_block(r) for r in range(grid.rows) if r not in (0, 1)]
    for rows in untouched_rows:
        assert torch.equal(before.bias[rows], after.bias[rows])
    # On the rows it was fitted on, the joint fit is optimal: a refit cannot improve it, and
    # does not make it worse beyond float rounding.
    store2 = Store(tmp_path / "store2")
    fit(store2, "bridge", first, sides(64), grid="2x3")
    same = refit(store2, "bridge", [0, 4, 5], first).refit
    assert same["after"]["train"]["r2"] >= same["before"]["train"]["r2"] - 1e-12
    manifest = store.bank("bridge").document
    assert [p["role"] for p in manifest["provenance"]["parents"]] == ["previous"]
    assert manifest["grid"]["refit"]["tiles"] == [1, 3] and manifest["grid"]["fit"]["rows"]["train"] == N


def test_prism_commands_refuse_bad_input_with_one_line(wb: Cli, store_dir: Path, tmp_path: Path) -> None:
    x, z = correlated(64, rows=512)
    good_x, good_z = write_pairs(tmp_path / "good", x, z)
    wb("prism", "fit", "--name", "ok", "--x", good_x, "--z", good_z, "--tiles", "4")
    fewer = write_pairs(tmp_path / "short", x, z[:500])[1]
    nan_x = x.clone()
    nan_x[17, 3] = math.nan
    inf_z = z.clone()
    inf_z[300, 0] = math.inf
    bad_nan = write_pairs(tmp_path / "nan", nan_x, z)[0]
    bad_inf = write_pairs(tmp_path / "inf", x, inf_z)[1]
    empty = write_pairs(tmp_path / "empty", torch.zeros(512, 0), z)[0]
    cases = {
        "rows must be paired": ["--x", good_x, "--z", fewer],
        "row 17 is not finite": ["--x", bad_nan, "--z", good_z],
        "row 300 is not finite": ["--x", good_x, "--z", bad_inf],
        "width 0": ["--x", empty, "--z", good_z],
        "larger than the widths": ["--x", good_x, "--z", good_z, "--grid", "65x2"],
        "has no grid that fits": ["--x", good_x, "--z", good_z, "--tiles", str(97 * 65)],
        "taps are embeddings": ["--x", good_x, "--z", good_z, "--source-tap", "middle"],
        "give either --x": ["--x", good_x],
        "--holdout must be": ["--x", good_x, "--z", good_z, "--holdout", "1.5"],
    }
    before = snapshot(store_dir)
    for expected, args in cases.items():
        assert_refused(wb("prism", "fit", "--name", "bad", *args, ok=False), expected)
        assert snapshot(store_dir) == before, expected
    for expected, args in {
        "tile 16 does not exist": ["ok", "--tiles", "2,16", "--x", good_x, "--z", good_z],
        "give tile numbers": ["ok", "--tiles", "2,x", "--x", good_x, "--z", good_z],
        "no ref named 'ghost'": ["ghost", "--tiles", "1", "--x", good_x, "--z", good_z],
    }.items():
        assert_refused(wb("prism", "refit", *args, ok=False), expected)
        assert snapshot(store_dir) == before, expected
    text = tmp_path / "some.txt"
    text.write_text("a line of text\n")
    for expected, args in {
        "no such file": ["ok", "--text", tmp_path / "missing.txt"],
        "fitted without a source model on record: give --source SPEC": ["ok", "--text", text],
        "no ref named 'ghost'": ["ghost", "--text", text],
    }.items():
        assert_refused(wb("prism", "eval", *args, ok=False), expected)
        assert snapshot(store_dir) == before, expected
    shown = wb("show", "ok").output
    assert "averaged (the seed design" in shown and "dense lstsq" in shown and "condition" in shown
    document = json.loads(wb("show", "ok", "--json").output)["manifest"]
    assert document["type"] == "prism" and document["tensors"]["grid"]["shape"] == [4, 32, 48]


def test_ridge_is_sklearns_ridge(tmp_path: Path) -> None:
    """λ penalises ‖W‖² on the sum-of-squares scale and never the bias: sklearn's Ridge(alpha=λ)."""
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    x, z = correlated(64, seed=4, rows=1024, noise=1.0)
    store = Store(tmp_path / "store")
    pairs = ActivationFiles(*write_pairs(tmp_path, x, z), holdout=0.0, seed=0)
    report = fit(store, "ridge", pairs, sides(64), ridge=500.0).report
    bridge = load_bridge("ridge", store=store)
    oracle = sklearn_linear.Ridge(alpha=500.0, solver="cholesky").fit(x.double().numpy(), z.double().numpy())
    assert np.allclose(bridge.weight.double().numpy(), oracle.coef_, atol=1e-5 * np.abs(oracle.coef_).max())
    assert np.allclose(bridge.bias.double().numpy(), oracle.intercept_, atol=1e-4)
    # The ridge costs some train fit: the report shows the gap to the dense least squares.
    assert 0 < report["dense_lstsq"]["r2"] - report["train"]["r2"] < 1e-2 and report["ridge"] == 500.0
