"""`import-mergekit`, and what `compose` does with a mergekit config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .context import json_option, progress_enabled, registry
from .output import print_json


def mergekit_spec(ctx: click.Context, spec: Any, dry_run: bool, *, signed_only: bool = False) -> tuple[Any, Any]:
    """(what to plan, a preview plan or None) for `compose SPEC`: a mergekit config becomes its
    composition, its folders ingested first — or, with --dry-run, only checked (the preview).
    `signed_only` (--require-signed): model folders are refused, as unsigned input."""
    from weightbank.composer.mergekit_import import import_mergekit, read_mergekit

    document = read_mergekit(spec)
    if document is None:
        return spec, None
    reg = registry(ctx, creates_store=True)
    origin = "<stdin>" if isinstance(spec, dict) else str(spec)
    imported = import_mergekit(
        document, origin, reg.store, ingest=not dry_run, folders=not signed_only, show_progress=progress_enabled(ctx)
    )
    _report(imported)
    return imported.composition, imported.preview if imported.pending else None


def _report(imported: Any) -> None:
    for folder, ref, new in imported.ingested:
        click.echo(f"ingested {folder} as {ref}" if new else f"{folder} is {ref} (unchanged)", err=True)
    for folder, ref in imported.pending:
        click.echo(f"would ingest {folder} as {ref} (not ingested: --dry-run)", err=True)


@click.command("import-mergekit")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write the composition here.")
@json_option
@click.pass_context
def import_mergekit(ctx: click.Context, config: Path, output: Path | None, as_json: bool) -> None:
    """Turn a mergekit CONFIG into a MES composition (local model folders are ingested)."""
    import yaml

    from weightbank.composer import plan
    from weightbank.composer.mergekit_import import import_mergekit as run_import
    from weightbank.composer.mergekit_import import read_mergekit
    from weightbank.registry.errors import InputError

    if not config.is_file():
        raise InputError(f"{config}: no such file")
    document = read_mergekit(config)
    if document is None:
        raise InputError(f"{config}: not a mergekit config (no merge_method)")
    reg = registry(ctx, creates_store=True)
    imported = run_import(document, str(config), reg.store, show_progress=progress_enabled(ctx))
    plan(imported.composition, store=reg.store)  # the composition as written must plan
    _report(imported)
    text = yaml.safe_dump(imported.composition, sort_keys=False, allow_unicode=True)
    if output is not None:
        staged = output.with_name(f".{output.name}.tmp")
        staged.write_text(text, "utf-8")
        staged.replace(output)
    if as_json:
        ingested = {folder: ref for folder, ref, _new in imported.ingested}
        print_json({"composition": imported.composition, "ingested": ingested, "output": output})
    elif output is None:
        click.echo(text, nl=False)
    else:
        click.echo(
            f"wrote {output} ({imported.composition['steps'][0]['op']} of {_count(imported.composition)} models)"
        )


def _count(composition: dict[str, Any]) -> int:
    step = composition["steps"][0]
    entries = step.get("models") or [s for piece in step.get("slices", []) for s in piece["sources"]]
    return len({entry["bank"] for entry in entries})
