"""Paired activations for a fit, streamed in batches: from two safetensors files, or from two
composed models run over a text file.

Both sources yield `PairBatch`es (x rows from model A, z rows from model B, which rows are
held out) and know their widths before any heavy work, so every check on the input happens
before a model is built or a row is summed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path
from typing import Protocol

import torch

from weightbank.registry.errors import InputError
from weightbank.registry.safetensors_format import DTYPE_SIZES, FLOAT_DTYPES, read_header

from ..dtypes import to_torch

# Rows per batch are chosen so that one batch of x and z is about this big in float32.
_BATCH_BYTES = 64 << 20


@dataclass(frozen=True)
class PairBatch:
    x: torch.Tensor  # [n, d_A]
    z: torch.Tensor  # [n, d_B]
    heldout: torch.Tensor  # [n] bool
    bytes: int  # input consumed, for progress


class PairSource(Protocol):
    """Where paired rows come from."""

    in_features: int
    out_features: int
    pairing: str  # files | tokens | line
    total_bytes: int

    def batches(self) -> Iterator[PairBatch]: ...


def heldout_mask(count: int, fraction: float, seed: int) -> torch.Tensor:
    """Which of `count` items (rows or lines) are held out: a seeded draw, independent of batching."""
    if not 0 <= fraction < 1:
        raise InputError(f"--holdout must be in [0, 1), not {fraction}")
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, generator=generator) < fraction


def check_finite(rows: torch.Tensor, first_row: int, source: str) -> None:
    """Refuse NaN or infinite values, naming the first bad row."""
    bad = ~torch.isfinite(rows).all(dim=1)
    if bool(bad.any()):
        row = first_row + int(bad.nonzero()[0])
        raise InputError(f"{source}: row {row} is not finite (NaN or inf)")


@dataclass(frozen=True)
class _Matrix:
    """Where a file's [rows, width] tensor lies: read in row ranges with plain reads (a
    memory map would leave every page it touched resident in the process)."""

    path: Path
    dtype: str
    offset: int  # of the first row, from the start of the file
    rows: int
    width: int
    itemsize: int

    def read(self, stream: BufferedReader, start: int, stop: int) -> torch.Tensor:
        row_bytes = self.width * self.itemsize
        buffer = bytearray((stop - start) * row_bytes)
        stream.seek(self.offset + start * row_bytes)
        if stream.readinto(buffer) != len(buffer):
            raise InputError(f"{self.path}: the file is shorter than its header says")
        return torch.frombuffer(buffer, dtype=to_torch(self.dtype)).reshape(stop - start, self.width)


def _matrix(path: Path, what: str) -> _Matrix:
    """The one 2-D floating-point tensor of a safetensors file, from its validated header."""
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    with path.open("rb") as stream:
        header = read_header(stream, path.stat().st_size, str(path))
    if len(header.tensors) != 1:
        raise InputError(f"{path}: holds {len(header.tensors)} tensors; give one [N, d] tensor of activations per file")
    ((key, entry),) = header.tensors.items()
    if len(entry.shape) != 2:
        raise InputError(f"{path}: tensor {key!r} has shape {list(entry.shape)}; activations must be [N, d]")
    if entry.dtype not in FLOAT_DTYPES or entry.dtype.startswith("C"):
        raise InputError(f"{path}: tensor {key!r} is {entry.dtype}; activations must be floating point")
    rows, width = entry.shape
    if width == 0:
        raise InputError(f"{path}: activations of width 0 ([N, 0]): there is nothing to bridge")
    if rows == 0:
        raise InputError(f"{path}: no rows ([0, {width}])")
    return _Matrix(path, entry.dtype, header.data_start + entry.begin, rows, width, DTYPE_SIZES[entry.dtype])


class ActivationFiles:
    """Paired rows from two safetensors files, each one [N, d] tensor, read in row batches."""

    pairing = "files"

    def __init__(self, x_path: str | Path, z_path: str | Path, *, holdout: float, seed: int) -> None:
        self.x = _matrix(Path(x_path), "--x")
        self.z = _matrix(Path(z_path), "--z")
        if self.x.rows != self.z.rows:
            raise InputError(
                f"{self.x.path} has {self.x.rows} rows but {self.z.path} has {self.z.rows}: rows must be paired"
            )
        self.in_features, self.out_features = self.x.width, self.z.width
        self.total_bytes = self.x.rows * (self.x.width * self.x.itemsize + self.z.width * self.z.itemsize)
        self.heldout = heldout_mask(self.x.rows, holdout, seed)

    def batches(self) -> Iterator[PairBatch]:
        step = max(1, _BATCH_BYTES // (4 * (self.in_features + self.out_features)))
        with self.x.path.open("rb") as xs, self.z.path.open("rb") as zs:
            for start in range(0, self.x.rows, step):
                stop = min(start + step, self.x.rows)
                x, z = self.x.read(xs, start, stop), self.z.read(zs, start, stop)
                check_finite(x, start, str(self.x.path))
                check_finite(z, start, str(self.z.path))
                size = (stop - start) * (self.x.width * self.x.itemsize + self.z.width * self.z.itemsize)
                yield PairBatch(x, z, self.heldout[start:stop], size)
