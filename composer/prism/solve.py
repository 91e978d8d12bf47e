"""Solvers for the bridge W [d_B, d_A] from centred normal equations, all in float64.

- `solve_joint`: one Cholesky solve of (Cxx + λI)·Wᵀ = Cxz — least squares (ridge λ).
- `backfit`: block-coordinate descent over tile columns (exact minimisation of one block of
  input columns at a time, the others fixed). Every step lowers the objective; it converges
  to the joint solution and, restricted to some tiles, is the refit with the others frozen.
- `dense_reference`: the minimum-norm unregularised least-squares solution through an
  eigendecomposition (another algorithm than Cholesky), and the condition number.
- `independent_tiles`: what the PRISM seed design does — each tile column fitted on its own
  inputs alone — reported for contrast only: it is not least squares on correlated inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from weightbank.registry.errors import InputError

from .grid import TileGrid
from .moments import Centred


@dataclass(frozen=True)
class Backfit:
    weight: torch.Tensor
    sweeps: int
    converged: bool


def _ridged(matrix: torch.Tensor, ridge: float) -> torch.Tensor:
    return matrix + ridge * torch.eye(len(matrix), dtype=matrix.dtype, device=matrix.device)


def _cholesky(matrix: torch.Tensor, ridge: float, what: str) -> torch.Tensor:
    factor, info = torch.linalg.cholesky_ex(_ridged(matrix, ridge))
    if int(info) != 0:
        scale = float(torch.trace(matrix)) / len(matrix)
        with_ridge = f" with --ridge {ridge:g}" if ridge else ""
        raise InputError(
            f"the covariance of {what} is singular (not positive definite{with_ridge}): the activations do not "
            f"span their width; add a ridge, e.g. --ridge {max(scale, 1e-12) * 1e-6:.3g}"
        )
    return factor


def solve_joint(centred: Centred, ridge: float) -> torch.Tensor:
    """W [d_B, d_A] minimising Σ‖z − W·x − b‖² + λ‖W‖² (with its best bias)."""
    factor = _cholesky(centred.xx, ridge, "the source activations")
    return torch.cholesky_solve(centred.xz, factor).T.contiguous()


def dense_reference(centred: Centred, ridge: float) -> tuple[torch.Tensor, float | None]:
    """(minimum-norm unregularised least-squares W, condition number of Cxx + λI).

    The condition number is None when Cxx + λI is singular."""
    values, vectors = torch.linalg.eigh(centred.xx)
    largest = float(values[-1])
    keep = values > max(largest, 0.0) * len(values) * torch.finfo(values.dtype).eps
    inverse = torch.where(keep, 1 / values.where(keep, torch.ones_like(values)), torch.zeros_like(values))
    weight_t = vectors @ (inverse[:, None] * (vectors.T @ centred.xz))
    smallest = float(values[0]) + ridge
    condition = (largest + ridge) / smallest if smallest > 0 else None
    return weight_t.T.contiguous(), condition if condition is None or math.isfinite(condition) else None


def independent_tiles(centred: Centred, grid: TileGrid, ridge: float) -> torch.Tensor:
    """The seed design's W: every tile column fitted alone on its own input columns, the
    pieces summed (`/ grid.cols` gives the averaged variant)."""
    weight_t = torch.zeros_like(centred.xz)
    for c in range(grid.cols):
        cols = grid.col_block(c)
        factor = _cholesky(centred.xx[cols, cols], ridge, f"tile column {c}")
        weight_t[cols] = torch.cholesky_solve(centred.xz[cols], factor)
    return weight_t.T.contiguous()


def objective(centred: Centred, weight: torch.Tensor, ridge: float) -> float:
    """Σ‖z − W·x − b*‖² + λ‖W‖² with the best bias b*, from the centred moments."""
    fitted = torch.sum((weight @ centred.xx) * weight) - 2 * torch.sum(weight * centred.xz.T)
    return centred.total + float(fitted) + ridge * float(torch.sum(weight * weight))


def backfit(
    centred: Centred, grid: TileGrid, ridge: float, *, tolerance: float = 1e-10, max_sweeps: int = 500
) -> Backfit:
    """Block-coordinate descent over tile columns, from W = 0.

    A sweep minimises the objective exactly over one tile column of W at a time (its input
    columns, every output row), the others fixed: forward over the tile columns, then
    backward (a symmetric block Gauss–Seidel sweep). Plain sweeps crawl on correlated
    inputs (each one removes only the error the blocks do not share), so successive sweeps
    are combined along conjugate directions: the sweep is the preconditioner of conjugate
    gradients. The objective falls at every step, and it stops when the normal-equation
    residual ‖Cxz − (Cxx + λI)·Wᵀ‖ is below `tolerance`·‖Cxz‖ in every output column."""
    system = _ridged(centred.xx, ridge)
    blocks = [grid.col_block(c) for c in range(grid.cols)]
    factors = [_cholesky(centred.xx[cols, cols], ridge, f"tile column {c}") for c, cols in enumerate(blocks)]

    def sweep(residual: torch.Tensor) -> torch.Tensor:
        step = torch.zeros_like(residual)
        for order in (range(len(blocks)), reversed(range(len(blocks)))):
            for c in order:
                cols = blocks[c]
                partial = residual[cols] - system[cols] @ step + system[cols, cols] @ step[cols]
                step[cols] = torch.cholesky_solve(partial, factors[c])
        return step

    weight_t = torch.zeros_like(centred.xz)
    residual = centred.xz.clone()
    scale = centred.xz.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)
    step = sweep(residual)
    direction = step
    agreement = (residual * step).sum(0)
    for sweeps in range(1, max_sweeps + 1):
        curvature = (direction * (system @ direction)).sum(0)
        alpha = torch.where(curvature > 0, agreement / curvature.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
        weight_t += alpha * direction
        residual -= alpha * (system @ direction)
        if bool((residual.norm(dim=0) <= tolerance * scale).all()):
            return Backfit(weight_t.T.contiguous(), sweeps, True)
        step = sweep(residual)
        next_agreement = (residual * step).sum(0)
        direction = step + (next_agreement / agreement.clamp_min(torch.finfo(torch.float64).tiny)) * direction
        agreement = next_agreement
    return Backfit(weight_t.T.contiguous(), max_sweeps, False)


def refit_tiles(centred: Centred, grid: TileGrid, ridge: float, weight: torch.Tensor, tiles: list[int]) -> torch.Tensor:
    """W with `tiles` refitted and every other tile frozen: the exact minimum of the objective
    over the selected tiles. The objective separates over output rows, so in each tile row
    the selected tiles are one least-squares problem on their input columns, with the frozen
    tiles' contribution taken off the target — one Cholesky solve, no iteration."""
    free_by_row: dict[int, list[int]] = {}
    for tile in sorted(set(tiles)):
        r, c = grid.position(tile)
        free_by_row.setdefault(r, []).append(c)
    weight_t = weight.T.clone()
    every = torch.arange(grid.in_features, device=weight.device)
    for r, columns in free_by_row.items():
        free = torch.cat([every[grid.col_block(c)] for c in columns])
        fixed = every[~torch.isin(every, free)]
        rows = grid.row_block(r)
        target = centred.xz[free, rows] - centred.xx[free][:, fixed] @ weight_t[fixed, rows]
        factor = _cholesky(centred.xx[free][:, free], ridge, f"the tiles of tile row {r}")
        weight_t[free, rows] = torch.cholesky_solve(target, factor)
    return weight_t.T.contiguous()
