"""`compose` and `verify`: building models from composition manifests."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from .arguments import spec_argument
from .context import json_option, progress_enabled, registry
from .merge_commands import mergekit_spec
from .output import human_bytes, print_json
from .signing_commands import trust_options


@click.command()
@click.argument("spec")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Write a from_pretrained folder here.")
@click.option("--name", help="Register the result as a new bank (next version of NAME).")
@click.option(
    "--device",
    help="Build the model on this device (cpu, cuda, cuda:N, auto); without it --out/--name stream on the CPU.",
)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), help="Target dtype.")
@click.option("--dry-run", is_flag=True, help="Validate and print the plan; read no tensor.")
@click.option("--max-shard-size", help="Shard size for --out [default: save_pretrained's, 50GB in transformers 5].")
@click.option("-m", "--message", default="", help="A note for the log (with --name).")
@click.option(
    "--exact-peft",
    is_flag=True,
    help="LoRA merges follow PEFT's arithmetic bit for bit also where the fused pass would not (several adapters "
    "on one weight, bf16 GEMM merges); slower.",
)
@trust_options
@json_option
@click.pass_context
def compose(
    ctx: click.Context,
    spec: str,
    out_dir: Path | None,
    name: str | None,
    device: str | None,
    dtype: str | None,
    dry_run: bool,
    max_shard_size: str | None,
    message: str,
    exact_peft: bool,
    as_json: bool,
    policy: Any,
) -> None:
    """Compose a model from SPEC (a composition manifest, JSON or YAML, `-` for stdin, a mergekit config,
    or a bank ref). With --require-signed, every bank it reads (and their inputs) must be signed by a
    trusted key."""
    from weightbank.composer import plan, save_model
    from weightbank.composer.build import build_model, resolve_device
    from weightbank.composer.executor import Executor
    from weightbank.composer.write import write_composition
    from weightbank.registry.digest import short
    from weightbank.registry.errors import InputError
    from weightbank.registry.naming import plural

    if not (dry_run or out_dir or name or device):
        raise InputError("nothing to do: give --out DIR, --name NEW, --device DEVICE or --dry-run")
    if device is not None and name is not None:
        raise InputError("--name streams the composition into the store on the CPU; drop --device")
    if device is not None:
        resolve_device(device)  # refused before anything is planned
    composition = spec_argument(ctx, spec)
    planned, preview = mergekit_spec(ctx, composition, dry_run, signed_only=policy is not None)
    reg = registry(ctx)
    store = reg.store
    the_plan = preview or plan(planned, dtype=dtype, store=store)
    if policy is not None:
        reg.require_signed(list(the_plan.inputs), policy, f"composition {spec}")
    if dry_run:
        _print_plan(the_plan.summary(), as_json)
        return
    _print_warnings(the_plan.warnings)
    start = time.perf_counter()
    if device is None:
        result = write_composition(
            store, the_plan, out_dir=out_dir, name=name, message=message, max_shard_size=max_shard_size,
            show_progress=reg.progress, exact_peft=exact_peft,
        )  # fmt: skip
        if as_json:
            print_json(result)
            return
        where = [f"wrote {result.out_dir}"] if result.out_dir else []
        if result.name:
            where.append(f"registered {result.name}@v{result.version} {short(result.digest)}")
        click.echo(f"{' and '.join(where)} — {plural(result.tensors, 'tensor')}, {human_bytes(result.bytes)}")
        return
    model = build_model(the_plan, Executor(store, exact_peft=exact_peft), device)
    seconds = time.perf_counter() - start
    if out_dir is not None:
        save_model(model, the_plan, store, out_dir)
    summary = {
        "model": type(model).__name__,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "parameters": model.num_parameters(),
        "seconds": round(seconds, 3),
        "out_dir": str(out_dir) if out_dir else None,
    }
    if as_json:
        print_json(summary)
    else:
        saved = f"; saved to {out_dir}" if out_dir else ""
        click.echo(
            f"composed {summary['model']} on {summary['device']} ({summary['dtype']}, "
            f"{summary['parameters']:,} parameters) in {seconds:.2f} s{saved}"
        )


@click.command()
@click.argument("spec")
@click.option("--against", metavar="REF", help="Compare with this bank, composing at its dtype, instead of the oracle.")
@click.option("--tolerance", type=float, default=1e-5, show_default=True, help="Largest max-abs difference accepted.")
@trust_options
@json_option
@click.pass_context
def verify(ctx: click.Context, spec: str, against: str | None, tolerance: float, as_json: bool, policy: Any) -> None:
    """Run the composed model against its oracle (or a bank) on fixed inputs; exit 1 over tolerance.
    With --require-signed, every bank it reads (and --against) must be signed by a trusted key."""
    from weightbank.composer import plan, verify_composition

    composition, _ = mergekit_spec(ctx, spec_argument(ctx, spec), dry_run=False, signed_only=policy is not None)
    reg = registry(ctx)
    store = reg.store
    if policy is not None:
        inputs = list(plan(composition, store=store).inputs) + ([reg.resolve(against)] if against else [])
        reg.require_signed(inputs, policy, f"verification of {spec}")
    report = verify_composition(
        composition, against=against, tolerance=tolerance, store=store, show_progress=progress_enabled(ctx)
    )
    _print_warnings(report.warnings)
    if as_json:
        effects = [{**effect.__dict__, "ok": effect.ok} for effect in report.effects]
        print_json({**report.__dict__, "effects": effects, "ok": report.ok})
    else:
        verdict = "ok" if report.ok else "FAIL"
        click.echo(
            f"{verdict}: max-abs difference {report.max_abs_diff:.3g} vs {report.oracle} ({report.precision}; "
            f"tolerance {report.tolerance:g}, inputs {report.inputs[0]}x{report.inputs[1]} tokens)"
        )
        for effect in report.effects:
            judged = "not function-preserving" if effect.tolerance is None else f"tolerance {effect.tolerance:g}"
            click.echo(
                f"  {effect.step}: max-abs difference {effect.max_abs_diff:.3g} vs the model before it at "
                f"{effect.tokens} tokens, {effect.label} ({judged})"
            )
        for oracle, diff in report.others:
            click.echo(f"{'ok' if diff <= report.tolerance else 'FAIL'}: max-abs difference {diff:.3g} vs {oracle}")
    failures = [f"{e.step} changes the outputs {e.label} by {e.max_abs_diff:.3g} > {e.tolerance:g}"
                for e in report.effects if not e.ok]  # fmt: skip
    if report.max_abs_diff > report.tolerance:
        compared = against if against is not None else "its oracle"
        failures.insert(0, f"{spec} differs from {compared} by {report.max_abs_diff:.3g} > {tolerance:g}")
    failures += [f"{spec} differs from {oracle} by {diff:.3g} > {tolerance:g}" for oracle, diff in report.others
                 if diff > report.tolerance]  # fmt: skip
    if failures:
        click.echo(f"error: {'; '.join(failures)}", err=True)
        sys.exit(1)


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _print_plan(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    click.echo(f"base        {summary['base']}")
    click.echo(f"steps       {', '.join(summary['steps']) or '-'}")
    click.echo(f"dtype       {summary['dtype']}")
    click.echo(f"tensors     {summary['tensors']} ({summary['parameters']:,} parameters)")
    click.echo(f"reads       {human_bytes(summary['bytes_read'])}")
    click.echo(f"produces    {human_bytes(summary['bytes_produced'])}")
    click.echo(f"peak memory ≤ {human_bytes(summary['peak_memory_estimate'])} (one tensor at a time)")
    for warning in summary["warnings"]:
        click.echo(f"warning     {warning}")
