"""Rules for the names users and files bring in: ref names, tensor names, file paths.

Names end up as store paths and as paths under an export folder, so anything that could
climb out of a folder (`..`, absolute paths, backslashes, control characters) is refused.
"""

from __future__ import annotations

import os
import re

from .errors import InputError

REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_ref_name(name: str, what: str = "ref") -> str:
    """A ref (or remote) name: letters, digits, `.`, `_`, `-`; starts with a letter or digit."""
    if not REF_NAME.fullmatch(name) or ".." in name:
        raise InputError(
            f"invalid {what} name {name!r}: use letters, digits, '.', '_' and '-' "
            "(starting with a letter or digit, no '..', at most 128 characters)"
        )
    return name


def check_tensor_name(name: str, where: str) -> str:
    """A tensor name as found in a safetensors header (dotted module path)."""
    if not name or ".." in name or name.startswith(("/", "\\")) or _CONTROL.search(name):
        raise InputError(f"{where}: refusing tensor name {name!r} (empty, '..', absolute or control characters)")
    return name


def check_relative_path(path: str, where: str) -> str:
    """A relative POSIX file path inside a model folder, e.g. `1_Pooling/config.json`."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or re.match(r"[A-Za-z]:", path)
        or _CONTROL.search(path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise InputError(f"{where}: refusing file path {path!r} (must be relative, without '..', '.' or empty parts)")
    return path


def looks_like_path(text: str) -> bool:
    """Whether a command-line argument is written as a path (`./tiny`, `/data/x`, `~/m`,
    `models/tiny`) rather than as a ref (`tiny`, `tiny@v2`, `blake3:…`), which never has a `/`."""
    return "/" in text or (os.sep != "/" and os.sep in text) or text in (".", "..") or text.startswith("~")
