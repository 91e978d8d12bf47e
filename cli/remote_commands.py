"""`weightbank remote add|ls|rm`, `push` and `pull`: sharing banks through S3, the Hub or a folder."""

from __future__ import annotations

from typing import Any

import click

from .context import json_option, registry
from .output import human_bytes, print_json, print_table
from .signing_commands import trust_options


@click.group()
def remote() -> None:
    """Remotes to push to and pull from: file://PATH, s3://BUCKET/PREFIX, hf://OWNER/REPO."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@json_option
@click.pass_context
def remote_add(ctx: click.Context, name: str, url: str, as_json: bool) -> None:
    """Record remote NAME at URL (hf://datasets/OWNER/REPO for a dataset repo). Contacts nothing."""
    added = registry(ctx).remote_add(name, url)
    if as_json:
        print_json(added)
    else:
        click.echo(f"added remote {added.name} {added.url}")


@remote.command("ls")
@json_option
@click.pass_context
def remote_ls(ctx: click.Context, as_json: bool) -> None:
    """List the remotes this store knows."""
    remotes = registry(ctx).remote_ls()
    if as_json:
        print_json(remotes)
    else:
        print_table([[r.name, r.url, "lazy" if r.lazy else ""] for r in remotes])


@remote.command("rm")
@click.argument("name")
@json_option
@click.pass_context
def remote_rm(ctx: click.Context, name: str, as_json: bool) -> None:
    """Forget remote NAME (nothing on the remote changes)."""
    removed = registry(ctx).remote_rm(name)
    if as_json:
        print_json(removed)
    else:
        click.echo(f"removed remote {removed.name} {removed.url}")


jobs_option = click.option(
    "-j", "--jobs", type=click.IntRange(min=1), default=None, help="Objects moved at once (default 8)."
)


@click.command()
@click.argument("name", metavar="NAME|URL")
@click.argument("refs", metavar="REF...", nargs=-1, required=True)
@jobs_option
@json_option
@click.pass_context
def push(ctx: click.Context, name: str, refs: tuple[str, ...], jobs: int | None, as_json: bool) -> None:
    """Send REFs (NAME: every version; NAME@vN: up to N) and all they need that the remote lacks."""
    result = registry(ctx).push(name, list(refs), jobs=jobs)
    _print_result("pushed to", result, as_json)


@click.command()
@click.argument("name", metavar="NAME|URL")
@click.argument("refs", metavar="REF...", nargs=-1, required=True)
@click.option("--lazy", is_flag=True, help="Fetch manifests and refs only; objects come when something reads them.")
@click.option(
    "--as", "rename", metavar="NEW", help="Import the (one) ref under this local name: for diverged histories."
)
@jobs_option
@trust_options
@json_option
@click.pass_context
def pull(
    ctx: click.Context, name: str, refs: tuple[str, ...], lazy: bool, rename: str | None, jobs: int | None,
    as_json: bool, policy: Any,
) -> None:  # fmt: skip
    """Fetch REFs and all they need that this store lacks; every object is verified on arrival,
    and local copies are verified too (a damaged one is replaced from the remote). With
    --require-signed, nothing is written unless every version pulled is signed by a trusted key."""
    result = registry(ctx).pull(name, list(refs), lazy=lazy, jobs=jobs, rename=rename, policy=policy)
    _print_result("pulled from", result, as_json)


def _print_result(verb: str, result: Any, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    objects = "objects left on the remote (lazy)" if result.lazy else f"{result.present} objects already there"
    click.echo(
        f"{verb} {result.remote}: {result.objects} objects ({human_bytes(result.object_bytes)}), "
        f"{result.manifests} manifests, "
        + (f"{result.signatures} signatures, " if result.signatures else "")
        + f"refs {', '.join(result.refs) or '-'}; {objects}"
    )
    for digest in result.repaired:
        click.echo(f"repaired damaged local object {digest} from {result.remote}", err=True)
