"""Ref histories on both sides of a transfer: what a push publishes, what a pull appends.

Histories are hash chains of create-only entries, so two stores agree on a ref when one
history is a prefix of the other, entry for entry. A push publishes the local entries after
the remote's (a remote entry that differs means someone else pushed first: "pull, then push
again"); a pull appends the remote entries after the local ones. A version that exists
locally is never rewritten: when the two histories diverge, pull refuses and names the first
version where they differ; `pull --as NEW` imports the remote's history under another name.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import ConflictError
from ..refs import RefEntry, entry_digest


def _divergence(ours: list[RefEntry], theirs: list[RefEntry]) -> int | None:
    """The first version at which two histories differ, or None if one is a prefix of the other."""
    for mine, other in zip(ours, theirs, strict=False):
        if mine != other:
            return mine.version
    return None


def _describe(entry: RefEntry) -> str:
    return f"{entry.action} by {entry.agent} at {entry.time}"


def unpublished(name: str, ours: list[RefEntry], theirs: list[RefEntry], remote: str) -> list[RefEntry]:
    """Push: our entries of `name` that the remote lacks; ConflictError if its history differs."""
    version = _divergence(ours, theirs)
    if version is not None:
        raise ConflictError(f"remote {remote} has a different v{version} of {name}: pull, then push again")
    return ours[len(theirs) :]


def incoming(name: str, ours: list[RefEntry], theirs: list[RefEntry], remote: str) -> list[RefEntry]:
    """Pull: the remote's entries of `name` to append locally; ConflictError if the histories diverge."""
    version = _divergence(ours, theirs)
    if version is not None:
        mine, other = ours[version - ours[0].version], theirs[version - theirs[0].version]
        raise ConflictError(
            f"{name}@v{version} differs here ({_describe(mine)}) and on {remote} ({_describe(other)}); local versions "
            f"are never rewritten — import the remote's history under another name: pull {remote} {name} --as NEW"
        )
    return theirs[len(ours) :]


def renamed(entries: list[RefEntry], name: str) -> list[RefEntry]:
    """The same history under another name, its hash chain recomputed."""
    result: list[RefEntry] = []
    for entry in entries:
        previous = entry_digest(result[-1]) if result else None
        result.append(replace(entry, name=name, previous=previous))
    return result
