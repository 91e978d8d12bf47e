"""`prism eval`: how well a stored bridge does on a text it was (presumably) not fitted on.

Two measures, as the model-stitching literature reports them: the bridge's R² on the pairs of
this text, and the next-token loss of the bridged pipeline (A up to its tap → bridge → B)
beside B's own and A's own loss on the same text. The bridged loss needs A's tokens to be
B's tokens (the pipeline reads A's ids and predicts in B's vocabulary); with different
tokenizers it is not defined and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightbank.registry.errors import InputError
from weightbank.registry.prism_bank import prism_bank
from weightbank.registry.progress import byte_progress
from weightbank.registry.store import Store

from .moments import SplitMoments
from .paired_text import LineBatch, PairedText, open_side, read_lines
from .runtime import BridgedModel, bridge_taps, load_bridge


@dataclass(frozen=True)
class EvalReport:
    name: str
    digest: str
    lines: int
    pairs: int
    pairing: str
    r2: float
    relative_residual: float
    fit_heldout: dict[str, float] | None  # what the fit measured on its own held-out rows
    tokens: int
    loss: dict[str, float | None]  # source, target, bridged (None when undefined)
    note: str | None


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed cross-entropy of every real next token, and how many there were."""
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    predicted = logits[:, :-1][valid].float()
    loss = torch.nn.functional.cross_entropy(predicted, ids[:, 1:][valid], reduction="sum")
    return float(loss), int(valid.sum())


def evaluate(
    store: Store,
    ref: str,
    text: str | Path,
    *,
    source: str | None = None,
    target: str | None = None,
    device: str = "cpu",
    max_length: int = 512,
    batch_lines: int = 16,
    show_progress: bool = False,
) -> EvalReport:
    """Evaluate prism bank `ref` on the lines of `text`, with the models recorded in the bank
    (or `source` / `target` instead)."""
    bank = prism_bank(store, ref)
    grid = bank.document["grid"]
    lines = read_lines(text)
    specs = []
    for role, given in (("source", source), ("target", target)):
        spec = given if given is not None else grid[role].get("composition")
        if spec is None:
            raise InputError(f"{ref} was fitted without a {role} model on record: give --{role} SPEC")
        specs.append((spec, given or f"the {role} model of {ref}"))
    side_a = open_side(store, specs[0][0], specs[0][1], grid["source"]["tap"], "source", None)
    side_b = open_side(store, specs[1][0], specs[1][1], grid["target"]["tap"], "target", None)
    pool = grid["fit"]["pairing"] if grid["fit"]["pairing"] in ("tokens", "line") else "auto"
    paired = PairedText(
        store, side_a, side_b, lines, pool=pool, device=device, max_length=max_length, batch_lines=batch_lines
    )
    bridge = load_bridge(bank.digest, device=device, store=store)
    taps = bridge_taps(bridge, side_a.plan.config, side_b.plan.config, (side_a.label, side_b.label))
    model_a, model_b = paired.models()
    bridged = BridgedModel(model_a, bridge, model_b, taps) if paired.same_tokens else None

    moments = SplitMoments(device)
    sums: dict[str, list[float]] = {"source": [0.0, 0], "target": [0.0, 0], "bridged": [0.0, 0]}
    with byte_progress(paired.total_bytes, "eval", show_progress) as advance:
        for batch in paired.line_batches():
            pairs = paired.pairs(batch)
            moments.add(pairs.x, pairs.z, torch.zeros(len(pairs.x), dtype=torch.bool))
            _add_losses(sums, batch, model_a, model_b, bridged)
            advance(batch.bytes)
    rows, _ = moments.splits()
    fitted = rows.quality(bridge.weight.detach().double(), bridge.bias.detach().double())
    loss = {
        key: (total / count if count and (key != "bridged" or bridged) else None)
        for key, (total, count) in sums.items()
    }
    note = None if bridged else "the two tokenizers differ: the bridged pipeline has no next-token loss on B's tokens"
    return EvalReport(
        ref,
        bank.digest,
        len(lines),
        rows.rows,
        paired.pairing,
        fitted.r2,
        fitted.relative_residual,
        grid["fit"]["heldout"],
        int(sums["source"][1]),
        loss,
        note,
    )


def _add_losses(
    sums: dict[str, list[float]], batch: LineBatch, model_a: Any, model_b: Any, bridged: BridgedModel | None
) -> None:
    with torch.no_grad():
        runs = [
            (
                "source",
                lambda: model_a(input_ids=batch.ids_a, attention_mask=batch.mask_a, use_cache=False).logits,
                batch.ids_a,
                batch.mask_a,
            ),
            (
                "target",
                lambda: model_b(input_ids=batch.ids_b, attention_mask=batch.mask_b, use_cache=False).logits,
                batch.ids_b,
                batch.mask_b,
            ),
        ]
        if bridged is not None:
            runs.append(("bridged", lambda: bridged(batch.ids_a, batch.mask_a).logits, batch.ids_a, batch.mask_a))
        for key, logits, ids, mask in runs:
            total, count = next_token_loss(logits(), ids, mask)
            sums[key][0] += total
            sums[key][1] += count


def perplexity(loss: float | None) -> float | None:
    return math.exp(loss) if loss is not None and loss < 700 else None
