"""Arguments that may be a path or a ref (`analyze REF|DIR`, `compose SPEC`), and `-` for stdin.

A path is taken as one when it is written as one (`./tiny`, `/data/tiny`, `models/tiny`, or a
`.yaml`/`.json` name for manifests). A bare word is a ref — unless no ref has that name and
a file or folder of that name is here. When both exist the argument is refused, as git
refuses an argument that is both a revision and a file: neither silently wins.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click


def path_or_ref(ctx: click.Context, text: str, suffixes: tuple[str, ...] = ()) -> Path | str:
    """`text` as a Path or as a ref (see the module docstring)."""
    from weightbank.registry.errors import InputError
    from weightbank.registry.names import looks_like_path

    if looks_like_path(text) or (suffixes and text.endswith(suffixes)):
        return Path(text)
    local = Path(text)
    if not local.exists():
        return text
    if _names_a_bank(ctx, text):
        what = "folder" if local.is_dir() else "file"
        raise InputError(
            f"{text!r} is both a ref in the store and a {what} here: write ./{text} for the {what}, "
            f"{text}@latest for the ref"
        )
    return local


def _names_a_bank(ctx: click.Context, text: str) -> bool:
    from weightbank.registry.errors import WeightbankError

    from .context import registry

    try:
        registry(ctx).store.resolve(text)
    except WeightbankError:
        return False
    return True


def spec_argument(ctx: click.Context, text: str) -> Path | str | dict[str, Any]:
    """A composition: `-` (the manifest on stdin), a manifest file, or a bank ref."""
    from weightbank.composer.spec import SPEC_SUFFIXES, read_spec_text

    if text == "-":
        return read_spec_text(sys.stdin.read(), "<stdin>")
    return path_or_ref(ctx, text, SPEC_SUFFIXES)
