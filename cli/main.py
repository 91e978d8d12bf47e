"""`weightbank` commands. Heavy modules are imported inside commands so `--help` is instant."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from .compose_commands import compose, verify
from .consolidate_commands import consolidate
from .context import BROKEN_PIPE_STATUS, WeightbankGroup, json_option, registry, silence_stdout
from .growth_commands import analyze, expand, plan_command
from .lineage_output import LINEAGE_FORMATS
from .merge_commands import import_mergekit
from .output import human_bytes, print_json, print_table
from .prism_commands import prism
from .publish_options import publish_options
from .remote_commands import pull, push, remote
from .scaffold_commands import scaffold
from .signing_commands import sign, signature_lines, signed_by, trust, trust_options


@click.group(cls=WeightbankGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="WEIGHTBANK_HOME",
    metavar="PATH|URL",
    help="Store location: a folder or fsspec URL [env WEIGHTBANK_HOME; default ~/.cache/weightbank].",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.version_option(package_name="weightbank")
@click.pass_context
def cli(ctx: click.Context, store: str | None, quiet: bool) -> None:
    """Content-addressed registry of model weight banks."""
    ctx.obj = {"store": store, "quiet": quiet}


@cli.command()
@click.argument("folder", metavar="FOLDER|URL")
@click.option("--name", help="Ref name to record the bank under (next version).")
@click.option("--base", metavar="REF", help="Adapters: the base bank the adapter was trained on.")
@click.option("-m", "--message", default="", help="A note for the log.")
@click.option("--rehash", is_flag=True, help="Re-read weight files even if unchanged since they were last ingested.")
@click.option("--force-type", is_flag=True, help="Allow a new version of another bank type than NAME holds.")
@click.option(
    "--as-version-of",
    "expansion",
    metavar="NAME",
    help="A trained grown model: record it as the next version of expansion NAME, storing only changed tensors.",
)
@trust_options
@json_option
@click.pass_context
def ingest(
    ctx: click.Context,
    folder: str,
    name: str | None,
    base: str | None,
    message: str,
    rehash: bool,
    force_type: bool,
    expansion: str | None,
    as_json: bool,
    policy: Any,
) -> None:
    """Ingest a Hugging Face model folder or a PEFT adapter folder (auto-detected): a local folder,
    hf://ORG/REPO[@REVISION][/PATH], s3://BUCKET/PREFIX or another fsspec URL.
    With --require-signed, the folder's model.sig (OpenSSF model-signing) must be signed by a trusted key."""
    if expansion is not None:
        if policy is not None:
            from weightbank.registry.errors import InputError

            raise InputError("--require-signed checks a folder's model.sig; it does not go with --as-version-of")
        _ingest_trained(ctx, folder, expansion, name, message, as_json)
        return
    if name is None:
        raise click.UsageError("Missing option '--name'.")
    result = registry(ctx).ingest(
        folder, name, base=base, message=message, rehash=rehash, force_type=force_type, policy=policy
    )
    if as_json:
        print_json(result)
        return
    from weightbank.registry.digest import short
    from weightbank.registry.naming import plural

    bank = registry(ctx).store.bank(result.digest)
    what = (
        f"{result.bank_type}: {plural(result.tensors, 'tensor')} ({human_bytes(bank.tensor_bytes)} of tensor data), "
        f"{plural(result.files, 'file')} ({human_bytes(bank.file_bytes)}); "
        f"{plural(result.new_objects, 'new object')} ({human_bytes(result.new_bytes)})"
    )
    state = "unchanged" if result.unchanged else "ingested"
    click.echo(f"{state} {result.name}@v{result.version} {short(result.digest)} — {what}")
    for skipped in result.skipped:
        click.echo(f"  skipped {skipped}", err=True)


def _ingest_trained(
    ctx: click.Context, folder: str, expansion: str, name: str | None, message: str, as_json: bool
) -> None:
    from weightbank.composer.expansion import ingest_trained
    from weightbank.registry.errors import InputError

    if name not in (None, expansion):
        raise InputError("--as-version-of records a version of that expansion; drop --name")
    result = ingest_trained(registry(ctx).store, folder, expansion, message=message)
    if as_json:
        print_json(result)
        return
    from weightbank.registry.digest import short
    from weightbank.registry.naming import plural

    click.echo(
        f"ingested {result.name}@v{result.version} {short(result.digest)}: {plural(result.tensors, 'tensor')} "
        f"differ from the recipe ({plural(result.new_objects, 'new object')})"
    )


@cli.command()
@click.argument("ref")
@click.argument("out_dir", metavar="OUT_DIR|URL")
@click.option(
    "--max-shard-size",
    help="Shard base models above this size [default: the source checkpoint's own shards where the bank "
    "came from one, else save_pretrained's default, 50GB in transformers 5].",
)
@click.option(
    "--sign", "sign_key", metavar="KEY.pem", type=click.Path(path_type=Path),
    help="Also write model.sig, the folder's OpenSSF model-signing signature (ECDSA P-256 private key).",
)  # fmt: skip
@publish_options
@trust_options
@json_option
@click.pass_context
def export(
    ctx: click.Context, ref: str, out_dir: str, max_shard_size: str | None, sign_key: Path | None, as_json: bool,
    policy: Any, **publish: Any,
) -> None:  # fmt: skip
    """Write a base or adapter bank as a folder from_pretrained loads: a local folder, or published
    with a model card to hf://ORG/REPO (one commit) or s3://BUCKET/PREFIX."""
    from weightbank.registry.keys import short_key_id
    from weightbank.registry.naming import plural
    from weightbank.registry.publish import PublishResult

    result = registry(ctx).export(
        ref, out_dir, max_shard_size=max_shard_size, sign_key=sign_key, policy=policy, **publish
    )
    if as_json:
        print_json(result)
        return
    weights = plural(len(result.weight_files), "weight file")
    if isinstance(result, PublishResult):
        where, signed = f"published {result.bank_type} bank {ref} to {result.url}", ""
    else:
        where = f"exported {result.bank_type} bank {ref} to {result.out_dir}"
        signed = f"; model.sig signed by {short_key_id(result.signed_by)}" if result.signed_by else ""
    click.echo(f"{where} ({weights}, {plural(result.files, 'other file')}, {human_bytes(result.bytes)}){signed}")


@cli.command()
@click.argument("ref")
@json_option
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show the manifest a ref names."""
    reg = registry(ctx)
    digest = reg.resolve(ref)
    manifest = reg.show(digest)
    if as_json:
        print_json({"digest": digest, "manifest": manifest, "signatures": [s.to_json() for s in reg.signers(digest)]})
        return
    click.echo(f"{digest}  {manifest['kind']}" + (f" ({manifest['type']})" if "type" in manifest else ""))
    if manifest["kind"] != "bank":
        print_json(manifest)
        for line in signature_lines(reg, digest):
            click.echo(line)
        return
    from .show import describe_bank

    for label, value in describe_bank(reg.store, digest, manifest):
        click.echo(f"{label:<11} {value}")
    for line in signature_lines(reg, digest):
        click.echo(line)


@cli.command()
@click.argument("name")
@click.option("-n", "--max-count", "count", type=click.IntRange(min=0), help="Show only the N newest versions.")
@click.option("--reverse", is_flag=True, help="Oldest first (after -n, as git log does).")
@json_option
@click.pass_context
def log(ctx: click.Context, name: str, count: int | None, reverse: bool, as_json: bool) -> None:
    """History of a ref, newest first, with who signed each version's manifest."""
    reg = registry(ctx)
    entries = list(reversed(reg.log(name)))[:count]
    if reverse:
        entries.reverse()
    if as_json:
        from weightbank.registry.signing import signers

        from .output import to_plain

        signed = {e.target: [s.to_json() for s in signers(reg.store, e.target)] for e in entries if e.target}
        print_json([{**to_plain(e), "signatures": signed.get(e.target, [])} for e in entries])
        return
    from weightbank.registry.digest import short

    rows = [
        [f"v{e.version}", short(e.target) if e.target else "-", e.time, e.agent, e.action, e.message,
         signed_by(reg, e.target)]
        for e in entries
    ]  # fmt: skip
    print_table(rows)


@cli.command()
@json_option
@click.pass_context
def refs(ctx: click.Context, as_json: bool) -> None:
    """List ref names with their latest version."""
    heads = registry(ctx).refs()
    if as_json:
        print_json(heads)
        return
    from weightbank.registry.digest import short

    print_table([[e.name, f"v{e.version}", short(e.target), e.time] for e in heads])


@cli.command()
@click.argument("name")
@click.option("--to", "version", required=True, type=click.IntRange(min=1), help="The version to restore.")
@click.option("-m", "--message", default="", help="A note for the log.")
@json_option
@click.pass_context
def rollback(ctx: click.Context, name: str, version: int, message: str, as_json: bool) -> None:
    """Append a version of NAME that points where version --to pointed (nothing if it already does)."""
    from weightbank.registry.digest import short

    result = registry(ctx).rollback(name, version, message=message)
    entry = result.entry
    if as_json:
        print_json(result)
    elif result.appended:
        click.echo(f"{entry.label} -> {short(entry.manifest)} (rolled back to v{version})")
    else:
        click.echo(f"{entry.label} already points where v{version} does; nothing appended")


@cli.command()
@click.argument("ref", metavar="NAME|NAME@vN")
@click.option("--purge", is_flag=True, help="Whole refs: gc then deletes the history too and frees the name.")
@click.option("-m", "--message", default="", help="A note for the log.")
@json_option
@click.pass_context
def rm(ctx: click.Context, ref: str, purge: bool, message: str, as_json: bool) -> None:
    """Remove a ref (every version) or one version: a tombstone is appended to its history, after
    which gc may collect what only the removed versions reached (once past its grace period)."""
    entry = registry(ctx).rm(ref, purge=purge, message=message)
    if as_json:
        print_json(entry)
        return
    removed = ", ".join(f"{entry.name}@v{v}" for v in entry.removes)
    then = "gc will also delete its history" if purge else "its history stays readable with `weightbank log`"
    click.echo(f"removed {removed} ({entry.label}); {then}")


@cli.command()
@click.argument("ref")
@click.option(
    "--format", "fmt", type=click.Choice(LINEAGE_FORMATS),
    help="text (default), json, dot, mermaid, prov (W3C PROV-JSON), or svg/png (drawn by Graphviz's dot).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="The same as --format json.")
@click.pass_context
def lineage(ctx: click.Context, ref: str, fmt: str | None, as_json: bool) -> None:
    """Provenance graph of a bank: a tree, JSON, Graphviz dot, Mermaid, PROV-JSON, or an SVG/PNG drawing."""
    from .lineage_output import print_lineage

    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json is --format json; it cannot be combined with --format {fmt}")
    print_lineage(registry(ctx).lineage(ref), "json" if as_json else fmt or "text")


def _report(report: Any, as_json: bool, what: str) -> None:
    if as_json:
        print_json(report.to_json())
    elif report.ok:
        from weightbank.registry.naming import plural

        signatures = f", {plural(report.signatures, 'signature')}" if report.signatures else ""
        click.echo(f"ok: {what} — {report.manifests} manifests, {report.objects} objects{signatures} verified")
    else:
        for problem in report.problems:
            click.echo(f"BAD {problem}")
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    if not report.ok:
        from weightbank.registry.naming import plural

        click.echo(f"error: {plural(len(report.problems), 'problem')} found in {what}", err=True)
        sys.exit(1)


@cli.command()
@click.argument("ref")
@trust_options
@json_option
@click.pass_context
def audit(ctx: click.Context, ref: str, as_json: bool, policy: Any) -> None:
    """Re-verify a bank's whole closure (objects, manifests, signatures); exit 1 naming every bad
    bank, tensor, object or signature — with --require-signed, every bank not signed by a trusted key."""
    _report(registry(ctx).audit(ref, policy=policy), as_json, ref)


@cli.command()
@click.option("--repair", "remote", metavar="REMOTE", help="Replace missing or damaged objects from this remote.")
@json_option
@click.pass_context
def fsck(ctx: click.Context, remote: str | None, as_json: bool) -> None:
    """Verify every ref, manifest and object in the store (--repair: fetch bad objects again)."""
    reg = registry(ctx)
    report = reg.fsck()
    if remote is not None:  # an unknown remote is an error even when nothing needs repair
        repaired = reg.repair(remote, report.bad_objects)
        for digest in repaired:
            click.echo(f"repaired object {digest} from {remote}", err=True)
        if repaired:
            report = reg.fsck()
    _report(report, as_json, "store")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Keep unreachable data (and what rm removed) younger than this: 90s, 30m, 1h, 2d, 1w.",
)
@click.option(
    "--keep-last",
    type=click.IntRange(min=1),
    help="First remove all but the N newest versions of every ref (or --ref).",
)
@click.option("--ref", "refs", multiple=True, metavar="NAME", help="With --keep-last: only these refs.")
@json_option
@click.pass_context
def gc(
    ctx: click.Context, dry_run: bool, grace: str, keep_last: int | None, refs: tuple[str, ...], as_json: bool
) -> None:
    """Remove objects and manifests that no live version of any ref reaches."""
    from weightbank.registry.errors import InputError
    from weightbank.registry.gc import parse_duration

    if refs and keep_last is None:
        raise InputError("--ref selects refs for --keep-last; give --keep-last N too")
    report = registry(ctx).gc(
        dry_run=dry_run, grace_seconds=parse_duration(grace), keep_last=keep_last, refs=list(refs)
    )
    if as_json:
        print_json(report.to_json())
        return
    verb = "would remove" if dry_run else "removed"
    if report.thinned:
        click.echo(f"{verb} {len(report.thinned)} old versions: {', '.join(report.thinned)}")
    click.echo(
        f"{verb} {len(report.objects)} objects, {len(report.manifests)} manifests, "
        + (f"{len(report.signatures)} signatures, " if report.signatures else "")
        + f"{len(report.temporaries)} temporary files ({human_bytes(report.bytes)})"
        + (f"; kept {report.kept_young} younger than the grace period" if report.kept_young else "")
        + (f"; deleted the history of {', '.join(report.purged)}" if report.purged else "")
    )


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), help="Keep the demo's folders here.")
@click.pass_context
def demo(ctx: click.Context, workdir: Path | None) -> None:
    """Walk through weightbank on a tiny Llama made on the spot (no downloads).

    It runs in a temporary store and folder, removed at the end; `--store DIR` (on the command
    line) keeps the store, `--workdir DIR` the folders."""
    import tempfile
    from contextlib import ExitStack

    from click.core import ParameterSource

    from weightbank.registry import Registry

    from .demo import run_demo

    with ExitStack() as stack:
        temporary = lambda prefix: Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))  # noqa: E731
        if ctx.find_root().get_parameter_source("store") == ParameterSource.COMMANDLINE:
            reg = registry(ctx)
        else:
            reg = Registry(temporary("weightbank-demo-store-"), progress=registry(ctx).progress)
        run_demo(reg, workdir or temporary("weightbank-demo-"))
        kept = [
            what for what, given in (("--store DIR", reg is registry(ctx)), ("--workdir DIR", workdir)) if not given
        ]
        if kept:
            click.echo(f"\nremoved the demo's temporary {'store and folders' if len(kept) == 2 else 'files'} "
                       f"(pass {' and '.join(kept)} to keep them)")  # fmt: skip


cli.add_command(compose)
cli.add_command(verify)
cli.add_command(analyze)
cli.add_command(plan_command)
cli.add_command(expand)
cli.add_command(remote)
cli.add_command(push)
cli.add_command(pull)
cli.add_command(prism)
cli.add_command(consolidate)
cli.add_command(sign)
cli.add_command(trust)
cli.add_command(import_mergekit)
cli.add_command(scaffold)


def main() -> None:
    """Console-script entry point."""
    # Our own progress bars are enough; transformers' and huggingface_hub's honour this.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # PEFT 0.21 calls a transformers 5 API that transformers deprecates: noise for our users.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.showwarning = _show_warning
    try:
        cli(prog_name="weightbank")
    finally:
        try:  # what is still buffered: a reader that went away (`| head`) is not an error
            sys.stdout.flush()
        except BrokenPipeError:
            silence_stdout()
            sys.exit(BROKEN_PIPE_STATUS)


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Our own warnings as one line on stderr (`warning: …`); others as Python prints them."""
    from weightbank.registry.errors import WeightbankWarning

    if issubclass(category, WeightbankWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
