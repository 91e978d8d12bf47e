"""`prism fit`, `prism refit`, `prism eval`: bridges between two models' hidden spaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .context import json_option, progress_enabled, registry
from .output import print_json, print_table

_TEXT_PATH = click.Path(dir_okay=False, path_type=Path)


def _pair_options(command: Any) -> Any:
    """Where the pairs come from: activation files, or two models over a text."""
    for option in reversed(
        [
            click.option(
                "--x",
                "x_path",
                type=_TEXT_PATH,
                help="Model A's activations: a safetensors file of one [N, d_A] tensor.",
            ),
            click.option(
                "--z",
                "z_path",
                type=_TEXT_PATH,
                help="Model B's activations: one [N, d_B] tensor, row-paired with --x.",
            ),
            click.option(
                "--text", "text_path", type=_TEXT_PATH, help="Run both models over this text (one sequence per line)."
            ),
            click.option(
                "--pool",
                type=click.Choice(["tokens", "line"]),
                help="Pair tokens (same tokenizer) or one mean-pooled pair per line (needed when they differ) "
                "[default: tokens; refit: as the fit].",
            ),
            click.option(
                "--holdout",
                type=float,
                default=0.1,
                show_default=True,
                help="Fraction of rows (lines for --text) held out.",
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of the held-out draw."),
            click.option(
                "--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N: models and accumulation."
            ),
            click.option("--dtype", help="Compose the models in this dtype (default: each one's own)."),
            click.option(
                "--max-length",
                type=click.IntRange(min=1),
                default=512,
                show_default=True,
                help="Tokens per line at most.",
            ),
            click.option(
                "--batch-lines",
                type=click.IntRange(min=1),
                default=16,
                show_default=True,
                help="Lines per forward pass.",
            ),
            click.option("-m", "--message", default="", help="A note for the log."),
            json_option,
        ]
    ):
        command = option(command)
    return command


def _source(
    ctx: click.Context, options: dict[str, Any], specs: tuple[Any, Any], taps: tuple[str, str]
) -> tuple[Any, Any]:
    """(pair source, (source side, target side)) from the command's options."""
    from weightbank.composer.build import resolve_device
    from weightbank.composer.prism import ActivationFiles, PairedText, SideRecord, open_side, read_lines
    from weightbank.registry.errors import InputError

    store = registry(ctx).store
    files, text = options["x_path"] or options["z_path"], options["text_path"]
    if bool(files) == bool(text) or (files and not (options["x_path"] and options["z_path"])):
        raise InputError("give either --x X.safetensors and --z Z.safetensors, or --text FILE with the models")
    resolve_device(options["device"])
    if files:
        pairs = ActivationFiles(options["x_path"], options["z_path"], holdout=options["holdout"], seed=options["seed"])
        return pairs, (
            _file_side(store, "source", specs[0], taps[0], pairs.in_features),
            _file_side(store, "target", specs[1], taps[1], pairs.out_features),
        )
    if specs[0] is None or specs[1] is None:
        raise InputError("--text needs both models: --source SPEC_A and --target SPEC_B")
    lines = read_lines(text)
    side_a, side_b = (
        open_side(store, spec, _label(spec, role), tap, role, options["dtype"])
        for spec, tap, role in zip(specs, taps, ("source", "target"), strict=True)
    )
    pairs = PairedText(
        store,
        side_a,
        side_b,
        lines,
        pool=options["pool"],
        device=options["device"],
        holdout=options["holdout"],
        seed=options["seed"],
        max_length=options["max_length"],
        batch_lines=options["batch_lines"],
    )
    return pairs, (
        SideRecord(side_a.tap, side_a.hidden, side_a.plan),
        SideRecord(side_b.tap, side_b.hidden, side_b.plan),
    )


def _file_side(store: Any, role: str, spec: Any, tap: str, width: int) -> Any:
    """A side of a fit from files: the model, when one is named, is recorded (not run)."""
    from weightbank.composer.plan import make_plan
    from weightbank.composer.prism import SideRecord, parse_tap
    from weightbank.composer.prism.taps import tap_named

    if spec is None:
        return SideRecord(tap_named(tap, role), width)
    plan = make_plan(store, spec)
    return SideRecord(parse_tap(tap, plan.config, role, _label(spec, role)), _hidden(plan), plan)


def _label(spec: Any, role: str) -> str:
    return spec if isinstance(spec, str) else f"the {role} model"


def _hidden(plan: Any) -> int:
    from weightbank.composer.architectures import Layout

    return int(Layout(plan.config).value("hidden"))


def _data_parameters(options: dict[str, Any]) -> dict[str, Any]:
    """What the activity record keeps about the data."""
    if options["text_path"]:
        return {
            "text": str(options["text_path"].resolve()),
            "pool": options["pool"],
            "holdout": options["holdout"],
            "seed": options["seed"],
            "max_length": options["max_length"],
        }
    return {
        "x": str(options["x_path"].resolve()),
        "z": str(options["z_path"].resolve()),
        "holdout": options["holdout"],
        "seed": options["seed"],
    }


@click.group()
def prism() -> None:
    """PRISM bridges: a least-squares map from model A's hidden space to model B's, as a tile grid."""


@prism.command("fit")
@click.option("--name", required=True, help="Prism bank to record (next version).")
@click.option("--source", "source_spec", metavar="SPEC_A", help="Model A: a bank ref or composition file.")
@click.option("--target", "target_spec", metavar="SPEC_B", help="Model B: a bank ref or composition file.")
@click.option("--source-tap", default="final", show_default=True, help="Where A is read: embeddings, layer.N or final.")
@click.option(
    "--target-tap", default="embeddings", show_default=True, help="Where B is written: embeddings or layer.N."
)
@click.option("--tiles", type=int, help="Number of tiles, factored to the aspect ratio [default 16].")
@click.option("--grid", help="Tile grid ROWSxCOLS (rows over B's width, columns over A's).")
@click.option("--ridge", type=float, default=0.0, show_default=True, help="Ridge λ on ‖W‖² (sum-of-squares scale).")
@click.option(
    "--method",
    type=click.Choice(["joint", "backfit"]),
    default="joint",
    show_default=True,
    help="One Cholesky solve, or block-coordinate descent over tile columns.",
)
@_pair_options
@click.pass_context
def fit_command(
    ctx: click.Context,
    name: str,
    source_spec: str | None,
    target_spec: str | None,
    source_tap: str,
    target_tap: str,
    tiles: int | None,
    grid: str | None,
    ridge: float,
    method: str,
    message: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Fit a bridge from activation files or from two models over a text, and record it."""
    from weightbank.composer.prism import fit

    options["pool"] = options["pool"] or "tokens"
    pairs, sides = _source(ctx, options, (source_spec, target_spec), (source_tap, target_tap))
    result = fit(
        registry(ctx).store,
        name,
        pairs,
        sides,
        tiles=tiles,
        grid=grid,
        ridge=ridge,
        method=method,
        device=options["device"],
        parameters=_data_parameters(options),
        message=message,
        show_progress=progress_enabled(ctx),
    )
    if as_json:
        print_json({"name": result.name, "version": result.version, "digest": result.digest, "grid": result.grid})
        return
    from weightbank.registry.digest import short

    click.echo(f"recorded {result.name}@v{result.version} {short(result.digest)}")
    print_grid(result.grid)


@prism.command("refit")
@click.argument("name")
@click.option("--tiles", "tile_list", required=True, help="Tiles to refit, e.g. 3,17 (row-major numbers).")
@click.option("--source", "source_spec", metavar="SPEC_A", help="Model A for --text (default: the one on record).")
@click.option("--target", "target_spec", metavar="SPEC_B", help="Model B for --text (default: the one on record).")
@click.option("--ridge", type=float, help="Ridge λ [default: the fit's].")
@_pair_options
@click.pass_context
def refit_command(
    ctx: click.Context,
    name: str,
    tile_list: str,
    source_spec: str | None,
    target_spec: str | None,
    ridge: float | None,
    message: str,
    as_json: bool,
    **options: Any,
) -> None:
    """Refit some tiles of bridge NAME with the others frozen; records the next version."""
    from weightbank.composer.prism import refit
    from weightbank.registry.prism_bank import prism_bank

    tiles = _tile_numbers(tile_list)
    store = registry(ctx).store
    grid = prism_bank(store, name).document["grid"]
    specs = (
        source_spec if source_spec is not None else grid["source"].get("composition"),
        target_spec if target_spec is not None else grid["target"].get("composition"),
    )
    options["pool"] = options["pool"] or ("line" if grid["fit"]["pairing"] == "line" else "tokens")
    pairs, _ = _source(ctx, options, specs, (grid["source"]["tap"], grid["target"]["tap"]))
    result = refit(
        store,
        name,
        tiles,
        pairs,
        ridge=ridge,
        device=options["device"],
        parameters=_data_parameters(options),
        message=message,
        show_progress=progress_enabled(ctx),
    )
    if as_json:
        print_json(result)
        return
    from weightbank.registry.digest import short

    report = result.refit
    click.echo(
        f"recorded {result.name}@v{result.version} {short(result.digest)}: refitted tiles "
        f"{', '.join(map(str, report['tiles']))} on {report['rows']['train']:,} rows, the others frozen"
    )
    rows = [["", "R² before", "R² after", "residual before", "residual after"]]
    for split in ("train", "heldout"):
        before, after = report["before"][split], report["after"][split]
        if before is not None and after is not None:
            rows.append(
                [
                    split,
                    r2_text(before["r2"]),
                    r2_text(after["r2"]),
                    f"{before['relative_residual']:.3e}",
                    f"{after['relative_residual']:.3e}",
                ]
            )
    print_table(rows)


def _tile_numbers(text: str) -> list[int]:
    from weightbank.registry.errors import InputError

    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"--tiles {text!r}: give tile numbers like 3,17") from None


@prism.command("eval")
@click.argument("name")
@click.option(
    "--text", "text_path", required=True, type=_TEXT_PATH, help="Text to evaluate on (one sequence per line)."
)
@click.option("--source", "source_spec", metavar="SPEC_A", help="Model A (default: the one on record).")
@click.option("--target", "target_spec", metavar="SPEC_B", help="Model B (default: the one on record).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--max-length", type=click.IntRange(min=1), default=512, show_default=True, help="Tokens per line at most."
)
@click.option(
    "--batch-lines", type=click.IntRange(min=1), default=16, show_default=True, help="Lines per forward pass."
)
@json_option
@click.pass_context
def eval_command(
    ctx: click.Context,
    name: str,
    text_path: Path,
    source_spec: str | None,
    target_spec: str | None,
    device: str,
    max_length: int,
    batch_lines: int,
    as_json: bool,
) -> None:
    """R² of bridge NAME on a text, and the bridged pipeline's next-token loss beside B's and A's."""
    from weightbank.composer.build import resolve_device
    from weightbank.composer.prism import evaluate
    from weightbank.composer.prism.evaluate import perplexity

    resolve_device(device)
    report = evaluate(
        registry(ctx).store,
        name,
        text_path,
        source=source_spec,
        target=target_spec,
        device=device,
        max_length=max_length,
        batch_lines=batch_lines,
        show_progress=progress_enabled(ctx),
    )
    if as_json:
        print_json(report)
        return
    heldout = report.fit_heldout
    rows = [
        ["pairs", f"{report.pairs:,} ({report.pairing}) from {report.lines:,} lines"],
        [
            "R²",
            f"{r2_text(report.r2)} on this text"
            + (f"; {r2_text(heldout['r2'])} on the fit's held-out rows" if heldout else ""),
        ],
        ["relative residual", f"{report.relative_residual:.3e}"],
    ]
    for key, label in (("bridged", "loss A→bridge→B"), ("target", "loss B alone"), ("source", "loss A alone")):
        value = report.loss[key]
        ppl = perplexity(value)
        rows.append([label, "n/a" if value is None else f"{value:.4f}" + (f" (perplexity {ppl:.2f})" if ppl else "")])
    print_table(rows)
    if report.note:
        click.echo(f"note: {report.note}")


def print_grid(grid: dict[str, Any]) -> None:
    """The tile grid and fit report of a prism bank (`prism fit`)."""
    print_table([list(row) for row in grid_rows(grid)])


def grid_rows(grid: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of a prism bank's tile grid and fit report, for `prism fit` and `show`."""
    fit, pad, seconds = grid["fit"], grid["padding"], grid["fit"]["seconds"]
    padding = f", padding {pad['rows']} rows / {pad['cols']} cols" if pad["rows"] or pad["cols"] else ""
    sweeps = f" ({fit['sweeps']} sweeps{'' if fit['converged'] else ', NOT converged'})" if "sweeps" in fit else ""
    gap = fit["dense_lstsq"]["r2"] - fit["train"]["r2"]
    seed = fit["independent_tiles"]
    source, target = grid["source"], grid["target"]
    rows = [
        ("bridge", f"{source['tap']} ({grid['in_features']}) → {target['tap']} ({grid['out_features']})"),
        ("grid", f"{grid['rows']}x{grid['cols']} = {grid['tiles']} tiles of {grid['tile_rows']}x{grid['tile_cols']}"
                 + padding),
        ("rows", f"{fit['rows']['train']:,} train, {fit['rows']['heldout']:,} held out ({fit['pairing']})"),
        ("method", f"{fit['method']}{sweeps}, ridge {fit['ridge']:g}"),
        ("train", _quality(fit["train"])),
        ("held out", _quality(fit["heldout"]) if fit["heldout"] else "-"),
        ("dense lstsq", f"{_quality(fit['dense_lstsq'])} (train rows; R² gap {gap:.1e})"),
        ("independent", f"{_quality(seed['summed'])} summed, {_quality(seed['averaged'])} averaged "
                        "(the seed design's per-tile fits; not least squares)"),
        ("condition", "singular" if fit["condition_number"] is None else f"{fit['condition_number']:.3g}"),
        ("time", f"{seconds['total']:.2f} s (collect {seconds['collect']:.2f} s, solve {seconds['solve']:.2f} s, "
                 f"report {seconds['report']:.2f} s); {fit['samples_per_second']:,.0f} samples/s collected and solved"),
    ]  # fmt: skip
    if "refit" in grid:
        refit = grid["refit"]
        tiles = ", ".join(map(str, refit["tiles"]))
        before, after = refit["before"]["train"]["r2"], refit["after"]["train"]["r2"]
        rows.append(("refit", f"tiles {tiles}: train R² {r2_text(before)} → {r2_text(after)}"))
    return rows + [("warning", warning) for warning in fit.get("warnings", [])]


def _quality(quality: dict[str, float]) -> str:
    return f"R² {r2_text(quality['r2'])}, relative residual {quality['relative_residual']:.3e}"


def r2_text(r2: float) -> str:
    """R² with the digits that matter: `0.672851`, or `1 − 9.42e-08` close to 1."""
    return f"1 − {1 - r2:.2e}" if 0.9999 < r2 < 1 else f"{r2:.6f}"
