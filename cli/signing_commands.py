"""`sign`, `trust add|ls|rm`, the `--require-signed [--trusted-key PEM…]` options other commands
take, and the lines `show` and `log` print about who signed what."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .context import json_option, registry
from .output import print_json, print_table

KEY_FILE = click.Path(dir_okay=True, path_type=Path)


@click.command()
@click.argument("ref")
@click.option(
    "--key", "key", required=True, type=KEY_FILE, metavar="KEY.pem", help="Private key (ECDSA P-256 or Ed25519, PEM)."
)
@json_option
@click.pass_context
def sign(ctx: click.Context, ref: str, key: Path, as_json: bool) -> None:
    """Sign the manifest REF names: a signature of its own, attached to the manifest's digest."""
    from weightbank.registry.digest import short
    from weightbank.registry.keys import short_key_id

    result = registry(ctx).sign(ref, key)
    if as_json:
        print_json(result)
        return
    who = short_key_id(result.key_id) + (f" ({result.trusted_as})" if result.trusted_as else "")
    if result.created:
        click.echo(f"signed {ref} ({short(result.manifest)}) with {who}")
    else:
        click.echo(f"{ref} ({short(result.manifest)}) is already signed by {who}; nothing written")


@click.group()
def trust() -> None:
    """The keys whose signatures this store accepts under --require-signed."""


@trust.command("add")
@click.argument("name")
@click.argument("public_key", metavar="PUBKEY.pem", type=KEY_FILE)
@json_option
@click.pass_context
def trust_add(ctx: click.Context, name: str, public_key: Path, as_json: bool) -> None:
    """Trust the public key in PUBKEY.pem under NAME."""
    added = registry(ctx).trust_add(name, public_key)
    if as_json:
        print_json(added.to_json())
    else:
        click.echo(f"trusting {added.key.key_id} ({added.key.algorithm}) as {added.name}")


@trust.command("ls")
@json_option
@click.pass_context
def trust_ls(ctx: click.Context, as_json: bool) -> None:
    """List the trusted keys: name, key id (sha256 of the public key), algorithm, when added."""
    keys = registry(ctx).trust_ls()
    if as_json:
        print_json([key.to_json() for key in keys])
    else:
        print_table([[k.name, k.key.key_id, k.key.algorithm, k.added, k.agent] for k in keys])


@trust.command("rm")
@click.argument("name")
@json_option
@click.pass_context
def trust_rm(ctx: click.Context, name: str, as_json: bool) -> None:
    """Stop trusting the key named NAME (signatures stay; they just no longer count)."""
    removed = registry(ctx).trust_rm(name)
    if as_json:
        print_json(removed.to_json())
    else:
        click.echo(f"no longer trusting {removed.name} ({removed.key.key_id})")


def trust_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`--require-signed [--trusted-key PEM…]`, handed to the command as `policy` (None without
    the flag). Bad keys fail here, before the command does anything."""

    @functools.wraps(command)
    def with_policy(*args: Any, require_signed: bool, trusted_keys: tuple[Path, ...], **kwargs: Any) -> Any:
        from weightbank.registry.errors import InputError

        if trusted_keys and not require_signed:
            raise InputError("--trusted-key goes with --require-signed")
        # The store is opened only to read its trust policy: a command may create its store (a
        # mergekit config's folders are ingested), so it is not opened before it runs otherwise.
        kwargs["policy"] = registry(click.get_current_context()).trust_policy(trusted_keys) if require_signed else None
        return command(*args, **kwargs)

    with_trusted_keys = click.option(
        "--trusted-key", "trusted_keys", multiple=True, type=KEY_FILE, metavar="PEM",
        help="With --require-signed: also trust this public key (repeatable).",
    )(with_policy)  # fmt: skip
    return click.option(
        "--require-signed", is_flag=True,
        help="Refuse banks (and their inputs) that are not signed by a trusted key (weightbank trust).",
    )(with_trusted_keys)  # fmt: skip


def signature_lines(reg: Any, digest: str) -> list[str]:
    """`show`'s lines about the signatures attached to `digest`."""
    from weightbank.registry.digest import short
    from weightbank.registry.keys import short_key_id
    from weightbank.registry.signatures import VALID

    lines = []
    for signer in reg.signers(digest):
        check = signer.check
        if check.key_id is None:
            lines.append(f"signature   {short(check.digest)} BAD: {check.problem}")
            continue
        who = f"{signer.trusted_as} (trusted)" if signer.trusted_as else "(unknown key)"
        line = f"signed by   {short_key_id(check.key_id)} {who}, {check.time}, {check.agent}"
        lines.append(line if check.status == VALID else f"{line} BAD: {check.problem}")
    return lines


def signed_by(reg: Any, digest: str | None) -> str:
    """`log`'s cell: who signed `digest` (trusted names, else short key ids; BAD if it does not hold)."""
    from weightbank.registry.keys import short_key_id
    from weightbank.registry.signatures import VALID
    from weightbank.registry.signing import signers

    if digest is None:
        return ""
    cells = [
        (s.trusted_as or short_key_id(s.check.key_id or "?")) + ("" if s.check.status == VALID else " BAD")
        for s in signers(reg.store, digest)  # a removed version's manifest may be gone: no resolving
    ]
    return "signed: " + ", ".join(cells) if cells else ""
