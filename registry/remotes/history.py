"""Ref histories on both sides of a transfer: what a push publishes, how a pull merges.

Version numbers are the remote's. A push needs the remote's history of a ref to be a prefix
of the local one (version by version, the same targets); the local versions after it are
published create-only, in order. A remote version with another target means someone else
pushed first: ConflictError, "pull, then push again".

A pull appends the remote versions the local store lacks. Local versions that were never
pushed and sit where the remote has other versions are moved after the remote's (renumbered,
their content unchanged), so nothing is lost and the next push publishes them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import ConflictError
from ..refs import RefEntry


def unpublished(name: str, ours: list[RefEntry], theirs: list[RefEntry], remote: str) -> list[RefEntry]:
    """Push: our versions of `name` that the remote lacks; ConflictError if its history differs."""
    for mine, other in zip(ours, theirs, strict=False):
        if mine.target != other.target:
            raise ConflictError(f"remote {remote} has a different v{other.version} of {name}: pull, then push again")
    return ours[len(theirs) :]


@dataclass(frozen=True)
class Merge:
    """Pull: local ref writes in the order to apply them, `(entry, overwrites a local version)`,
    and the local-only versions moved, as `(old number, new number)`."""

    writes: list[tuple[RefEntry, bool]]
    moved: list[tuple[int, int]]


def merge(ours: list[RefEntry], theirs: list[RefEntry]) -> Merge:
    """How a local history takes in the remote's (see the module docstring)."""
    common = 0
    while common < min(len(ours), len(theirs)) and ours[common].target == theirs[common].target:
        common += 1
    incoming, local_only = theirs[common:], ours[common:]
    if not incoming:
        return Merge([], [])  # the local history has the remote's (and maybe more)
    renumbered = {entry.version: len(theirs) + i for i, entry in enumerate(local_only, start=1)}
    moved = [_renumbered(entry, renumbered) for entry in local_only]
    # Highest first: a local version is copied to its new number before its old slot is overwritten.
    order = [*reversed(moved), *incoming]
    return Merge(
        [(entry, entry.version <= len(ours)) for entry in order],
        list(renumbered.items()),
    )


def _renumbered(entry: RefEntry, numbers: dict[int, int]) -> RefEntry:
    """`entry` under its new number; a rollback to a moved version follows it."""
    back = entry.rollback_to
    return replace(entry, version=numbers[entry.version], rollback_to=numbers.get(back, back) if back else back)
