"""`weightbank scaffold add|check|fuse|prune|persist`: Kasmina-style seeds and what becomes of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .context import json_option, registry
from .output import human_bytes, print_json, print_table


@click.group()
def scaffold() -> None:
    """Scaffold banks: seeds grafted onto a host's linear layers, folded or kept at run time."""


@scaffold.command("add")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", required=True, metavar="REF", help="The base bank the seeds were grafted onto.")
@click.option("--name", required=True, help="Ref name to record the scaffold under (next version).")
@click.option("--alpha", type=float, help="A constant alpha for every seed (replaces scaffold.json's).")
@click.option("--alpha0", type=float, help="Schedule: alpha at step 0.")
@click.option("--alpha1", type=float, help="Schedule: alpha at the end of the ramp.")
@click.option("--shape", type=click.Choice(["linear", "cosine", "sigmoid"]), help="Schedule: the ramp's shape.")
@click.option("--steps", type=click.IntRange(min=1), help="Schedule: T, the ramp's length in steps.")
@click.option("--at", type=click.IntRange(min=0), help="Schedule: t, the step the seeds are stored at [default: T].")
@click.option("--steepness", type=float, help="Schedule: sigmoid steepness (k = 12 × steepness).")
@click.option("-m", "--message", default="", help="A note for the log.")
@json_option
@click.pass_context
def add(
    ctx: click.Context, folder: Path, host: str, name: str, message: str, as_json: bool, **alpha_options: Any
) -> None:
    """Record FOLDER (seeds.safetensors + scaffold.json, or a PEFT LoRA folder) as a scaffold bank."""
    from weightbank.registry.digest import short
    from weightbank.registry.scaffold_add import add_scaffold_folder

    result = add_scaffold_folder(
        registry(ctx).store, folder, name, host=host, alpha=_alpha(alpha_options), message=message
    )
    if as_json:
        print_json(result)
        return
    state = "unchanged" if result.unchanged else "added"
    click.echo(
        f"{state} {result.name}@v{result.version} {short(result.digest)} — {result.seeds} seeds on host {host}, "
        f"{result.tensors} tensors, {human_bytes(result.bytes)}; {result.new_objects} new objects"
    )


def _alpha(options: dict[str, Any]) -> float | dict[str, Any] | None:
    from weightbank.registry.errors import InputError

    schedule = {key: value for key, value in options.items() if key != "alpha" and value is not None}
    if options["alpha"] is not None:
        if schedule:
            raise InputError("give either --alpha or a schedule (--alpha0 --alpha1 --shape --steps [--at]), not both")
        return float(options["alpha"])
    return schedule or None


@scaffold.command("check")
@click.argument("ref")
@json_option
@click.pass_context
def check(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Per seed: whether it folds into its host and why not, the alpha it folds with, its bytes."""
    report = registry(ctx).check_scaffold(ref)
    if as_json:
        print_json({**report.__dict__, "foldable": report.foldable})
        return
    decision = f"; {report.decision}" if report.decision else ""
    click.echo(f"{ref}: {len(report.seeds)} seeds on host {report.host_ref}{decision}")
    rows = [["slot", "kind", "alpha", "fold", "bytes"]]
    rows += [
        [s.slot, s.kind, s.alpha_text, "yes" if s.foldable else f"no: {s.reason}", human_bytes(s.bytes)]
        for s in report.seeds
    ]
    print_table(rows)


@scaffold.command("fuse")
@click.argument("name")
@click.option("--as", "as_name", metavar="NEW", help="Register the result as NEW, not as the host's next version.")
@click.option("-m", "--message", default="", help="A note for both logs.")
@json_option
@click.pass_context
def fuse(ctx: click.Context, name: str, as_name: str | None, message: str, as_json: bool) -> None:
    """Fold scaffold NAME into its host for good: a new host version (or bank NEW) storing only changed tensors."""
    from weightbank.composer.scaffold_fuse import fuse as fuse_scaffold
    from weightbank.registry.digest import short

    reg = registry(ctx)
    result = fuse_scaffold(reg.store, name, as_name=as_name, message=message, show_progress=reg.progress)
    if as_json:
        print_json(result)
        return
    click.echo(
        f"fused {name} into {result.name}@v{result.version} {short(result.digest)} — {result.changed} of "
        f"{result.tensors} tensors changed, {result.new_objects} new objects; {name}@v{result.scaffold_version} "
        "records the decision"
    )


def _decision(action: str, summary: str) -> click.Command:
    """`scaffold prune` / `scaffold persist`: append the decision to NAME's history."""

    @scaffold.command(action, help=summary)
    @click.argument("name")
    @click.option("-m", "--message", default="", help="Why (for the log).")
    @json_option
    @click.pass_context
    def decide(ctx: click.Context, name: str, message: str, as_json: bool) -> None:
        entry = getattr(registry(ctx), f"{action}_scaffold")(name, message=message)
        if as_json:
            print_json(entry)
        else:
            click.echo(f"{entry.name}@v{entry.version} {entry.action}: {entry.message}")

    return decide


prune = _decision("prune", "Drop scaffold NAME's seeds: the host is unchanged, the scaffold stays readable.")
persist = _decision("persist", "Keep scaffold NAME's seeds as runtime modules (compose them with scaffold.attach).")
