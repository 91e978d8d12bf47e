"""Streamed second moments of paired activations (x from model A, z from model B).

Memory is O(d²) whatever the number of rows: each batch adds XᵀX, XᵀZ, ΣX, ΣZ and Σ‖z‖² to
float64 sums. Rows are shifted by the first batch's means before they are summed (the
shifted-data trick), so centring at the end subtracts small numbers from small numbers
instead of two large ones. Everything a fit needs afterwards — the centred normal equations
and the residual of *any* affine map on these rows — follows from the sums, so train and
held-out quality need no second pass over the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from weightbank.registry.errors import InputError

ACCUMULATE = torch.float64


@dataclass(frozen=True)
class Quality:
    """How well an affine map fits a set of rows."""

    r2: float  # 1 − RSS / Σ‖z − z̄‖² (pooled over all output dimensions)
    relative_residual: float  # ‖Z − Ẑ‖_F / ‖Z‖_F

    def to_document(self) -> dict[str, float]:
        return {"r2": self.r2, "relative_residual": self.relative_residual}


@dataclass(frozen=True)
class Centred:
    """The centred normal equations of a set of rows: Cxx·Wᵀ = Cxz, b = z̄ − W·x̄."""

    xx: torch.Tensor  # [d_A, d_A]
    xz: torch.Tensor  # [d_A, d_B]
    mean_x: torch.Tensor
    mean_z: torch.Tensor
    total: float  # Σ‖z − z̄‖²

    def bias(self, weight: torch.Tensor) -> torch.Tensor:
        """The best bias for `weight` [d_B, d_A] on these rows."""
        return self.mean_z - weight @ self.mean_x


class Moments:
    """Sums over rows of (x − shift_x, z − shift_z), in float64 on `device`."""

    def __init__(self, shift_x: torch.Tensor, shift_z: torch.Tensor) -> None:
        self.shift_x, self.shift_z = shift_x, shift_z
        d_a, d_b = shift_x.numel(), shift_z.numel()
        self.rows = 0
        self.xx = shift_x.new_zeros(d_a, d_a)
        self.xz = shift_x.new_zeros(d_a, d_b)
        self.x = shift_x.new_zeros(d_a)
        self.z = shift_z.new_zeros(d_b)
        self.zz = shift_z.new_zeros(())

    def add(self, x: torch.Tensor, z: torch.Tensor) -> None:
        """Add paired rows x [n, d_A], z [n, d_B] (float64, on this device)."""
        if not len(x):
            return
        x = x - self.shift_x
        z = z - self.shift_z
        self.rows += len(x)
        self.xx.addmm_(x.T, x)
        self.xz.addmm_(x.T, z)
        self.x += x.sum(0)
        self.z += z.sum(0)
        self.zz += (z * z).sum()

    def centred(self) -> Centred:
        n = self.rows
        if n == 0:
            raise InputError("no rows to fit")
        mean_x, mean_z = self.x / n, self.z / n
        xx = self.xx - torch.outer(self.x, mean_x)
        xz = self.xz - torch.outer(self.x, mean_z)
        total = float(self.zz - self.z @ mean_z)
        return Centred((xx + xx.T) / 2, xz, mean_x + self.shift_x, mean_z + self.shift_z, total)

    def residual(self, weight: torch.Tensor, bias: torch.Tensor) -> float:
        """Σ‖z − W·x − b‖² over these rows, from the sums alone."""
        # In shifted coordinates the residual is z' − W·x' − b' with b' = b − shift_z + W·shift_x.
        shifted_bias = bias - self.shift_z + weight @ self.shift_x
        cross = torch.sum(weight * self.xz.T) + shifted_bias @ self.z
        fitted = torch.sum((weight @ self.xx) * weight) + 2 * shifted_bias @ (weight @ self.x)
        fitted = fitted + self.rows * shifted_bias @ shifted_bias
        return max(float(self.zz - 2 * cross + fitted), 0.0)

    def quality(self, weight: torch.Tensor, bias: torch.Tensor) -> Quality:
        """R² and relative residual of z ≈ W·x + b on these rows."""
        centred = self.centred()
        rss = self.residual(weight, bias)
        squares = float(self.zz + 2 * self.shift_z @ self.z + self.rows * self.shift_z @ self.shift_z)
        if centred.total <= 0 or squares <= 0:
            raise InputError("the target activations are constant: R² is undefined")
        return Quality(1 - rss / centred.total, math.sqrt(rss / squares))


class SplitMoments:
    """Train and held-out moments of one stream of pairs, sharing one shift."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.train: Moments | None = None
        self.heldout: Moments | None = None

    def add(self, x: torch.Tensor, z: torch.Tensor, heldout: torch.Tensor) -> None:
        """Add rows x [n, d_A], z [n, d_B]; `heldout` [n] bool marks the held-out ones."""
        x = x.to(self.device, ACCUMULATE)
        z = z.to(self.device, ACCUMULATE)
        if self.train is None or self.heldout is None:
            shift_x, shift_z = x.mean(0), z.mean(0)
            self.train, self.heldout = Moments(shift_x, shift_z), Moments(shift_x, shift_z)
        heldout = heldout.to(self.device)
        self.train.add(x[~heldout], z[~heldout])
        self.heldout.add(x[heldout], z[heldout])

    def splits(self) -> tuple[Moments, Moments]:
        if self.train is None or self.heldout is None or self.train.rows == 0:
            raise InputError("no training rows: the data is empty or --holdout leaves nothing to fit")
        return self.train, self.heldout
