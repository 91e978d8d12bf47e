"""`consolidate`: EMA over a bank's versions and delta pruning, published atomically."""

from __future__ import annotations

from typing import Any

import click

from .context import json_option, registry
from .output import human_bytes, print_json, print_table


@click.command()
@click.argument("name")
@click.option("--ema", "decay", type=float, metavar="β", help="EMA decay: m ← β·m + (1 − β)·W_v over --versions.")
@click.option("--versions", metavar="A..B", help="The versions to average: A..B (inclusive) or A,B,C, in order.")
@click.option("--prune-keep", "keep", type=float, metavar="F", help="Keep the top fraction F of |W − W_parent|.")
@click.option("--prune-threshold", "threshold", type=float, metavar="τ", help="Keep the entries with |Δ| > τ.")
@click.option(
    "--prune-scope",
    "scope",
    type=click.Choice(["tensor", "global"]),
    default="tensor",
    show_default=True,
    help="--prune-keep per tensor, or over the whole model.",
)
@click.option("--parent", metavar="REF", help="What Δ is measured from when pruning (a base or expansion bank).")
@click.option("-m", "--message", required=True, help="A note for the log.")
@click.option("--as", "as_name", metavar="NEW", help="Append the result to NEW instead of NAME.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; read no tensor, publish nothing.")
@json_option
@click.pass_context
def consolidate(
    ctx: click.Context,
    name: str,
    message: str,
    as_name: str | None,
    dry_run: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Average versions of NAME (EMA) and/or prune it against a parent; append the result as
    NAME's next version (or NEW's) — compare-and-swap against the head it started from."""
    from weightbank.composer.consolidate import Consolidation
    from weightbank.composer.consolidate import consolidate as run

    reg = registry(ctx)
    result = run(
        reg.store, name, Consolidation(**options), message=message, as_name=as_name, dry_run=dry_run,
        show_progress=reg.progress,
    )  # fmt: skip
    if as_json:
        print_json(result)
        return
    _print(result)


def _print(result: Any) -> None:
    from weightbank.registry.digest import short

    seconds = result.seconds
    timing = ", ".join(f"{step} {1000 * s:.0f} ms" for step, s in seconds.items() if step != "total")
    what = f"{result.tensors} tensors: {result.computed} computed, {result.unchanged} unchanged"
    if result.dry_run:
        after = f"v{result.started_from}" if result.started_from else "nothing yet"
        click.echo(f"would append {result.name}@v{(result.started_from or 0) + 1} after {after} ({result.bank_type})")
        click.echo(f"  {what}; plan {1000 * seconds['plan']:.0f} ms")
    else:
        click.echo(f"consolidated {result.name}@v{result.version} {short(result.digest)} ({result.bank_type})")
        click.echo(f"  {what}; {result.new_objects} new objects, {human_bytes(result.bytes_stored)} stored")
        click.echo(f"  {seconds['total']:.2f} s ({timing})")
    for item in result.inputs:
        weight = f" weight {item.weight:.4g}" if item.weight is not None else ""
        click.echo(f"  input {item.ref} {short(item.digest)} {item.role}{weight}")
    if result.pruning_total is not None:
        total = result.pruning_total
        click.echo(
            f"  pruned: kept {_share(total.kept, total.elements)} of the entries "
            f"({_share(total.changed, total.elements)} differed from the parent), max deviation "
            f"{total.max_deviation:.3g}, RMS {total.rms_deviation:.3g}, {human_bytes(total.bytes_saved)} saved"
        )
        rows = [["tensor", "kept", "changed", "max dev", "RMS dev", "saved"]]
        for name, p in result.pruning.items():
            kept, changed, saved = _share(p.kept, p.elements), _share(p.changed, p.elements), human_bytes(p.bytes_saved)
            rows.append([name, kept, changed, f"{p.max_deviation:.3g}", f"{p.rms_deviation:.3g}", saved])
        print_table(rows)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"
