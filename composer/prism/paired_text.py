"""Two composed models over one text file: paired activations at their taps, line by line.

Every non-empty line is one sequence. With the same tokenizer (every line gives the same
token ids to both) pairs are token-aligned: one (x, z) per token. With different tokenizers
tokens do not correspond, so this refuses unless `pool="line"`: one pair per line, each
side the mean of its line's activations. Special tokens (BOS, EOS, padding) are left out of
both: their activations are outliers that would dominate a least-squares fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightbank.registry.errors import InputError
from weightbank.registry.store import Store

from ..api import build_planned, load_tokenizer
from ..architectures import Layout
from ..plan import Plan, make_plan
from .pairs import PairBatch, heldout_mask
from .taps import Tap, parse_tap, run_to_tap

POOLS = ("tokens", "line")


def read_lines(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--text {file}: no such file")
    try:
        text = file.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--text {file}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InputError(f"--text {file}: no non-empty lines")
    return lines


@dataclass
class Side:
    """One model of the pair: what the user called it, its plan, tap and tokenizer."""

    label: str
    plan: Plan
    tap: Tap
    tokenizer: Any
    ids: list[list[int]]
    model: Any = None

    @property
    def hidden(self) -> int:
        return int(Layout(self.plan.config).value("hidden"))

    def valid(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Positions that are real, non-special tokens."""
        special = torch.tensor(sorted(self.tokenizer.all_special_ids), dtype=ids.dtype)
        return mask.bool() & ~torch.isin(ids, special)


def open_side(store: Store, spec: Any, label: str, tap: str, role: str, dtype: str | None) -> Side:
    """Plan a model (no tensor read yet), check its tap, load its tokenizer."""
    plan = make_plan(store, spec, dtype=dtype)
    tokenizer = load_tokenizer(store, plan)
    if tokenizer is None:
        raise InputError(
            f"{label} has no tokenizer files: ingest the model with its tokenizer, or fit from activation files"
        )
    return Side(label, plan, parse_tap(tap, plan.config, role, label), tokenizer, [])


def _max_length(config: dict[str, Any], requested: int) -> int:
    limit = config.get("max_position_embeddings") or config.get("n_positions")
    return min(requested, int(limit)) if isinstance(limit, int) else requested


@dataclass(frozen=True)
class LineBatch:
    """A batch of lines, tokenised and padded for each side."""

    ids_a: torch.Tensor
    mask_a: torch.Tensor
    ids_b: torch.Tensor
    mask_b: torch.Tensor
    heldout: torch.Tensor  # [lines] bool
    bytes: int
    first_line: int  # 0-based number of the batch's first line in the text


def _padded(rows: list[list[int]], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


class PairedText:
    """Models A and B over the lines of a text file (a `PairSource` for fits)."""

    def __init__(
        self,
        store: Store,
        source: Side,
        target: Side,
        lines: list[str],
        *,
        pool: str,
        device: str,
        holdout: float = 0.0,
        seed: int = 0,
        max_length: int = 512,
        batch_lines: int = 16,
    ) -> None:
        if pool not in (*POOLS, "auto"):
            raise InputError(f"--pool {pool!r}: choose tokens or line")
        self.store, self.source, self.target, self.lines = store, source, target, lines
        self.device, self.batch_lines = device, batch_lines
        # One length for both, so that truncation alone never makes shared tokens differ.
        length = min(_max_length(side.plan.config, max_length) for side in (source, target))
        for side in (source, target):
            side.ids = side.tokenizer(lines, add_special_tokens=True, truncation=True, max_length=length)["input_ids"]
        self.same_tokens = source.ids == target.ids
        if pool == "auto":  # evaluation of a bridge fitted from files: pair tokens when they are the same
            pool = "tokens" if self.same_tokens else "line"
        if pool == "tokens" and not self.same_tokens:
            line = next(i for i, (a, b) in enumerate(zip(source.ids, target.ids, strict=True)) if a != b)
            raise InputError(
                f"{source.label} and {target.label} tokenize the text differently (line {line + 1}: "
                f"{len(source.ids[line])} vs {len(target.ids[line])} tokens), so tokens cannot be paired; "
                "pass --pool line for one mean-pooled pair per line"
            )
        self.pairing = pool
        self.in_features, self.out_features = source.hidden, target.hidden
        self.heldout = heldout_mask(len(lines), holdout, seed)
        self.total_bytes = sum(len(line.encode()) for line in lines)

    def models(self) -> tuple[Any, Any]:
        """A and B, built on the device the first time they are needed."""
        for side in (self.source, self.target):
            if side.model is None:
                side.model = build_planned(side.plan, self.store, self.device)
        return self.source.model, self.target.model

    def line_batches(self) -> Iterator[LineBatch]:
        for start in range(0, len(self.lines), self.batch_lines):
            stop = min(start + self.batch_lines, len(self.lines))
            ids_a, mask_a = _padded(self.source.ids[start:stop], self.device)
            ids_b, mask_b = _padded(self.target.ids[start:stop], self.device)
            size = sum(len(line.encode()) for line in self.lines[start:stop])
            yield LineBatch(ids_a, mask_a, ids_b, mask_b, self.heldout[start:stop], size, start)

    def pairs(self, batch: LineBatch) -> PairBatch:
        """The paired activations of one batch of lines."""
        model_a, model_b = self.models()
        hidden_a = run_to_tap(model_a, self.source.tap, batch.ids_a, batch.mask_a).float()
        hidden_b = run_to_tap(model_b, self.target.tap, batch.ids_b, batch.mask_b).float()
        valid_a = self.source.valid(batch.ids_a.cpu(), batch.mask_a.cpu()).to(hidden_a.device)
        valid_b = self.target.valid(batch.ids_b.cpu(), batch.mask_b.cpu()).to(hidden_b.device)
        if self.pairing == "tokens":
            line_of = torch.arange(len(valid_a), device=valid_a.device)[:, None].expand_as(valid_a)
            x, z, lines = hidden_a[valid_a], hidden_b[valid_b], line_of[valid_a]
        else:
            keep = valid_a.any(1) & valid_b.any(1)  # a line of special tokens only has no mean
            x = _line_means(hidden_a, valid_a)[keep]
            z = _line_means(hidden_b, valid_b)[keep]
            lines = torch.arange(len(keep), device=keep.device)[keep]
        for side, rows in ((self.source, x), (self.target, z)):
            bad = ~torch.isfinite(rows).all(dim=1)
            if bool(bad.any()):
                line = batch.first_line + int(lines[bad.nonzero()[0]]) + 1
                raise InputError(f"{side.label} at {side.tap}: activations are not finite (NaN or inf) on line {line}")
        return PairBatch(x, z, batch.heldout.to(lines.device)[lines], batch.bytes)

    def batches(self) -> Iterator[PairBatch]:
        for batch in self.line_batches():
            yield self.pairs(batch)


def _line_means(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    weights = valid.to(hidden.dtype)
    return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
