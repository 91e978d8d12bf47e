"""`analyze`, `plan` and `expand`: model growth from the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from .arguments import path_or_ref
from .context import json_option, progress_enabled, registry
from .output import print_json, print_table

_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """`200000`, `1.5e9`, `350M`, `2B` → an integer."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([KMBGT]?)\s*", text.upper())
    if not match:
        raise click.BadParameter(f"{text!r} is not a count like 2B, 350M or 1.5e9")
    return int(float(match[1]) * _SUFFIXES[match[2]])


def _config_of(ctx: click.Context, source: str) -> dict[str, Any]:
    from weightbank.registry.errors import InputError
    from weightbank.registry.json_input import parse_json_object
    from weightbank.registry.naming import with_article

    found = path_or_ref(ctx, source)
    if isinstance(found, Path):
        if not found.is_dir():
            raise InputError(f"{found}: no such model folder")
        config = found / "config.json"
        if not config.is_file():
            raise InputError(f"{found}: no config.json")
        return parse_json_object(config.read_bytes(), str(config), "config")
    bank = registry(ctx).store.bank(found)
    if bank.config is None:
        raise InputError(f"{source} is {with_article(bank.type)} bank without a model config")
    return bank.config


@click.command()
@click.argument("source", metavar="REF|DIR")
@json_option
@click.pass_context
def analyze(ctx: click.Context, source: str, as_json: bool) -> None:
    """The architecture record of a bank or model folder, and which growth is lossless."""
    from weightbank.composer.analyze import analyze_any
    from weightbank.registry.progress import step_progress

    with step_progress(1, "analyze", progress_enabled(ctx), unit="model") as advance:
        record = analyze_any(_config_of(ctx, source))
        advance(1)
    if as_json:
        print_json(record)
        return
    if record.get("growth") == "unsupported":
        _print_partial(record)
        return
    norm = record["norm"]
    heads = f"{record['heads']} heads / {record['kv_heads']} KV ({record['attention']}), head_dim {record['head_dim']}"
    rows = [
        ["family", f"{record['family']} ({record['model_type']})"],
        ["layers", str(record["layers"])],
        ["hidden", str(record["hidden"])],
        ["attention", heads],
        ["mlp", f"{record['mlp']}, intermediate {record['intermediate']}"],
        ["vocab", f"{record['vocab']}, tied embeddings: {record['tied_embeddings']}"],
        ["norm", f"{norm['type']} ({norm['placement']}-norm, eps {norm['eps']:g})"],
        ["positions", record["positions"]],
        ["biases", ", ".join(k for k, v in record["biases"].items() if v) or "none"],
        ["parameters", f"{record['parameters']:,}"],
    ]
    print_table(rows)
    click.echo("")
    print_table([[op, e["support"], e["reason"]] for op, e in record["operators"].items()])


def _print_partial(record: dict[str, Any]) -> None:
    """What is known of a family without a growth table."""
    sizes = ("layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "vocab")
    shown = [(key, record.get(key)) for key in sizes]
    rows = [["family", f"{record['model_type']} (no growth table)"], ["model", record["model_class"]]]
    rows += [[key, str(value)] for key, value in shown if value is not None]
    rows += [[key, str(value)] for key, value in sorted(record["config"].items())]
    rows += [["norm", ", ".join(record["norm_modules"]) or "-"], ["parameters", f"{record['parameters']:,}"]]
    rows += [["growth", f"unsupported: {record['reason']}"]]
    print_table(rows)
    click.echo("")
    print_table([[op, e["support"], e["reason"]] for op, e in record["operators"].items()])


@click.command("plan")
@click.argument("ref")
@click.option("--target-params", required=True, help="Parameter target: 2B, 350M, 1.5e9…")
@json_option
@click.pass_context
def plan_command(ctx: click.Context, ref: str, target_params: str, as_json: bool) -> None:
    """Growth plans that bring REF closest to a parameter target, ranked."""
    from weightbank.composer.planner import candidates

    found = candidates(registry(ctx).store, ref, parse_count(target_params), show_progress=progress_enabled(ctx))
    if as_json:
        print_json(
            [{"plan": k, "steps": c.steps, "parameters": c.parameters, "error": c.error, "lossless": c.lossless}
             for k, c in enumerate(found)]
        )  # fmt: skip
        return
    rows = [["K", "parameters", "vs target", "lossless", "steps"]]
    rows += [[str(k), f"{c.parameters:,}", f"{c.error:+.2%}", "yes" if c.lossless else "no", c.describe()]
             for k, c in enumerate(found)]  # fmt: skip
    print_table(rows)


@click.command()
@click.argument("ref")
@click.option("--name", required=True, help="Name of the expansion bank to record.")
@click.option("--depth", type=click.IntRange(min=1), help="New number of layers (identity blocks).")
@click.option("--ffn", type=click.IntRange(min=1), help="New intermediate size.")
@click.option("--heads", type=click.IntRange(min=1), help="New number of query heads (whole KV groups).")
@click.option("--kv-heads", type=click.IntRange(min=1), help="New number of KV heads (split in place).")
@click.option("--hidden", type=click.IntRange(min=1), help="New hidden size.")
@click.option("--plan", "plan_index", type=click.IntRange(min=0), help="Apply candidate K of `plan --target-params`.")
@click.option("--target-params", help="With --plan: the target the candidates were made for.")
@click.option(
    "--method", help="Construction: depth identity|duplicate|solar, ffn duplicate|zero, hidden zero|mean|duplicate."
)
@click.option("--placement", help="With --depth: llama-pro (default: after every group of layers) | interior.")
@click.option("--ffn-factor", type=click.IntRange(min=1), help="With --hidden duplication: FFN growth factor.")
@click.option("--noise", type=float, help="Symmetry-breaking noise std (opt-in; verify reports the deviation).")
@click.option("--seed", type=int, help="Seed for noise and neuron choice.")
@click.option("--lossy", is_flag=True, help="Accept a construction that is not exact (reported by verify).")
@click.option("-m", "--message", default="", help="A note for the log.")
@json_option
@click.pass_context
def expand(ctx: click.Context, ref: str, name: str, plan_index: int | None, target_params: str | None,
           message: str, as_json: bool, **options: Any) -> None:  # fmt: skip
    """Record growth of REF as an expansion bank (a recipe, no tensors until trained)."""
    from weightbank.composer.expansion import expand as record_expansion
    from weightbank.registry.digest import short

    steps = _steps(ctx, ref, plan_index, target_params, options)
    result = record_expansion(registry(ctx).store, ref, name, steps, message=message)
    if as_json:
        print_json(result)
        return
    click.echo(
        f"recorded {result.name}@v{result.version} {short(result.digest)}: {json.dumps(result.steps)} → "
        f"{result.parameters:,} parameters, manifest {result.manifest_bytes:,} bytes, no tensors"
    )


# Order of the steps when several growth options are given: each value is the final size of its
# axis, and widening the hidden size by duplication multiplies heads and the FFN width, so the
# hidden size grows first and the layers (copies of grown layers) last.
_AXIS_STEPS = {
    "hidden": lambda v: {"op": "expand.hidden", "size": v},
    "heads": lambda v: {"op": "expand.heads", "heads": v},
    "kv_heads": lambda v: {"op": "expand.heads", "kv_heads": v},
    "ffn": lambda v: {"op": "expand.ffn", "size": v},
    "depth": lambda v: {"op": "expand.depth", "layers": v},
}


# Options that belong to one axis's step when several are grown at once.
_AXIS_OPTIONS = {"placement": "depth", "ffn_factor": "hidden"}


def _steps(
    ctx: click.Context, ref: str, plan_index: int | None, target: str | None, options: dict[str, Any]
) -> list[Any]:
    from weightbank.registry.errors import InputError

    growth = {key: options.pop(key) for key in _AXIS_STEPS}
    chosen = {key: value for key, value in growth.items() if value is not None}
    extras = {key: value for key, value in options.items() if value not in (None, False)}
    if plan_index is not None:
        if chosen or target is None:
            raise InputError("--plan K needs --target-params and no other growth option")
        from weightbank.composer.planner import candidates

        # The search is a fixed number of small probes (well under a second), so it is run
        # again rather than cached: what `plan` printed is what K names.
        found = candidates(registry(ctx).store, ref, parse_count(target), show_progress=progress_enabled(ctx))
        if plan_index >= len(found):
            raise InputError(f"--plan {plan_index}: there are only {len(found)} candidates")
        return [{**step, **extras} for step in found[plan_index].steps]
    if not chosen:
        raise InputError("give --depth, --ffn, --heads, --kv-heads or --hidden (several make one recipe), or --plan K")
    if "method" in extras and len(chosen) > 1:
        raise InputError("--method names one axis's construction: give it with a single growth option")
    for option, axis in _AXIS_OPTIONS.items():
        if option in extras and axis not in chosen:
            raise InputError(f"--{option.replace('_', '-')} goes with --{axis}")
    return [
        {**_AXIS_STEPS[key](value), **{k: v for k, v in extras.items() if _AXIS_OPTIONS.get(k, key) == key}}
        for key, value in chosen.items()
    ]
