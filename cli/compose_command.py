"""`weightbank compose`: dry-run plans, streamed folders and banks, models on devices."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .output import human_bytes, print_json


def run_compose(
    registry: Any,
    spec: str,
    *,
    out_dir: Path | None,
    name: str | None,
    device: str | None,
    dtype: str | None,
    dry_run: bool,
    max_shard_size: str,
    message: str,
    as_json: bool,
) -> None:
    from weightbank.composer import plan, save_model, write
    from weightbank.composer.build import build_model
    from weightbank.composer.executor import Executor
    from weightbank.registry.errors import InputError

    store = registry.store
    if not (dry_run or out_dir or name or device):
        raise InputError("nothing to do: give --out DIR, --name NEW, --device DEVICE or --dry-run")
    if device is not None and name is not None:
        raise InputError("--name streams the composition into the store on the CPU; drop --device")
    the_plan = plan(spec, dtype=dtype, store=store)
    if dry_run:
        _print_plan(the_plan.summary(), as_json)
        return
    start = time.perf_counter()
    if device is None:
        result = write(
            the_plan.spec, out_dir=out_dir, name=name, dtype=dtype, message=message, max_shard_size=max_shard_size,
            store=store, show_progress=registry.progress,
        )  # fmt: skip
        if as_json:
            print_json(result)
            return
        where = [f"wrote {result.out_dir}"] if result.out_dir else []
        if result.name:
            where.append(f"registered {result.name}@v{result.version} {result.digest}")
        click.echo(f"{' and '.join(where)} — {result.tensors} tensors, {human_bytes(result.bytes)}")
        return
    model = build_model(the_plan, Executor(store), device)
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
