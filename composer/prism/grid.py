"""The tile grid of a PRISM bridge: how the dense map W [d_B, d_A] is cut into tiles.

The grid has `rows × cols` tiles of `tile_rows × tile_cols` each, numbered row-major (tile
t = r·cols + c covers W[r·tile_rows : (r+1)·tile_rows, c·tile_cols : (c+1)·tile_cols]).
Edge tiles are zero-padded when the widths do not divide; the padding is recorded, and no
tile may be padding only. Stored as one `[T, tile_rows, tile_cols]` tensor, which holds the
same numbers as the dense matrix, rearranged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from weightbank.registry.errors import InputError


@dataclass(frozen=True)
class TileGrid:
    """Tile geometry for a map from `in_features` (d_A) to `out_features` (d_B)."""

    rows: int
    cols: int
    out_features: int
    in_features: int

    def __post_init__(self) -> None:
        for label, count, width in (("rows", self.rows, self.out_features), ("columns", self.cols, self.in_features)):
            if count < 1:
                raise InputError(f"a tile grid needs at least one tile per axis, not {count} {label}")
            if count > width:
                raise InputError(
                    f"grid {self.rows}x{self.cols} is larger than the widths: {count} tile {label} for width {width}"
                )
            size = -(-width // count)
            if (count - 1) * size >= width:
                raise InputError(
                    f"grid {self.rows}x{self.cols}: {count} tile {label} of {size} on width {width} leaves a tile "
                    "of padding only; choose another grid"
                )

    @property
    def tiles(self) -> int:
        return self.rows * self.cols

    @property
    def tile_rows(self) -> int:
        return -(-self.out_features // self.rows)

    @property
    def tile_cols(self) -> int:
        return -(-self.in_features // self.cols)

    @property
    def padding(self) -> tuple[int, int]:
        """Zero rows and columns added at the bottom and right edges."""
        return self.rows * self.tile_rows - self.out_features, self.cols * self.tile_cols - self.in_features

    def row_block(self, r: int) -> slice:
        """Output rows of W in tile row r (clipped to the real width)."""
        return slice(r * self.tile_rows, min((r + 1) * self.tile_rows, self.out_features))

    def col_block(self, c: int) -> slice:
        """Input columns of W in tile column c (clipped to the real width)."""
        return slice(c * self.tile_cols, min((c + 1) * self.tile_cols, self.in_features))

    def position(self, tile: int) -> tuple[int, int]:
        """(tile row, tile column) of tile number `tile`."""
        if not 0 <= tile < self.tiles:
            raise InputError(f"tile {tile} does not exist: the grid has {self.tiles} tiles (0..{self.tiles - 1})")
        return divmod(tile, self.cols)

    def to_tiles(self, weight: torch.Tensor) -> torch.Tensor:
        """Dense W [d_B, d_A] → the padded tile tensor [T, tile_rows, tile_cols]."""
        pad_rows, pad_cols = self.padding
        padded = torch.nn.functional.pad(weight, (0, pad_cols, 0, pad_rows))
        blocks = padded.reshape(self.rows, self.tile_rows, self.cols, self.tile_cols).permute(0, 2, 1, 3)
        return blocks.reshape(self.tiles, self.tile_rows, self.tile_cols).contiguous()

    def to_dense(self, tiles: torch.Tensor) -> torch.Tensor:
        """The tile tensor → dense W [d_B, d_A] (a rearrangement, no arithmetic)."""
        expected = (self.tiles, self.tile_rows, self.tile_cols)
        if tuple(tiles.shape) != expected:
            raise InputError(f"tile tensor has shape {list(tiles.shape)}, the grid needs {list(expected)}")
        blocks = tiles.reshape(self.rows, self.cols, self.tile_rows, self.tile_cols).permute(0, 2, 1, 3)
        padded = blocks.reshape(self.rows * self.tile_rows, self.cols * self.tile_cols)
        return padded[: self.out_features, : self.in_features].contiguous()

    def to_document(self) -> dict[str, Any]:
        pad_rows, pad_cols = self.padding
        return {
            "tiles": self.tiles,
            "rows": self.rows,
            "cols": self.cols,
            "tile_rows": self.tile_rows,
            "tile_cols": self.tile_cols,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "padding": {"rows": pad_rows, "cols": pad_cols},
            "order": "row-major",
        }

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> TileGrid:
        return cls(document["rows"], document["cols"], document["out_features"], document["in_features"])


def choose_grid(out_features: int, in_features: int, tiles: int) -> TileGrid:
    """The PRISM design's rule: factor `tiles` = rows × cols with rows/cols closest to the
    aspect ratio d_B/d_A (near-square tiles), among grids that fit the widths."""
    if out_features < 1 or in_features < 1:
        raise InputError(f"cannot tile a {out_features}x{in_features} map: both widths must be at least 1")
    if tiles < 1:
        raise InputError(f"--tiles must be at least 1, not {tiles}")
    aspect = math.log(out_features / in_features)
    candidates = []
    for rows in range(1, tiles + 1):
        if tiles % rows:
            continue
        try:
            grid = TileGrid(rows, tiles // rows, out_features, in_features)
        except InputError:
            continue
        candidates.append((abs(math.log(rows / grid.cols) - aspect), grid))
    if not candidates:
        raise InputError(
            f"--tiles {tiles} has no grid that fits a {out_features}x{in_features} map "
            f"(every factorisation is larger than the widths or leaves tiles of padding only)"
        )
    return min(candidates, key=lambda pair: pair[0])[1]


def parse_grid(text: str, out_features: int, in_features: int) -> TileGrid:
    """`--grid RxC` (tile rows x tile columns)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise InputError(f"--grid {text!r}: expected ROWSxCOLS, e.g. 4x4")
    return TileGrid(int(match[1]), int(match[2]), out_features, in_features)
