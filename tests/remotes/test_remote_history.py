"""Ref histories across a push or pull: prefixes publish or append; divergence conflicts both
ways (a local version is never rewritten) and can be imported under another name."""

from __future__ import annotations

import pytest

from weightbank.registry import ConflictError, RefEntry
from weightbank.registry.refs import History, entry_digest
from weightbank.registry.remotes.history import incoming, renamed, unpublished


def _history(*targets: str, name: str = "m") -> list[RefEntry]:
    entries: list[RefEntry] = []
    for version, t in enumerate(targets, start=1):
        previous = entry_digest(entries[-1]) if entries else None
        entries.append(
            RefEntry(name, version, "blake3:" + t * 64, "ingest", "2026-01-01T00:00:00Z", "a", previous=previous)
        )
    return entries


def test_push_publishes_what_the_remote_lacks_and_refuses_divergence() -> None:
    assert [e.version for e in unpublished("m", _history("a", "b", "c"), _history("a"), "origin")] == [2, 3]
    assert unpublished("m", _history("a"), _history("a", "b"), "origin") == []
    with pytest.raises(ConflictError, match="remote origin has a different v2 of m: pull, then push again"):
        unpublished("m", _history("a", "b"), _history("a", "f"), "origin")


def test_pull_appends_when_the_local_history_is_a_prefix() -> None:
    assert [e.version for e in incoming("m", _history("a"), _history("a", "b", "c"), "origin")] == [2, 3]
    assert incoming("m", _history("a", "b"), _history("a"), "origin") == []


def test_pull_never_rewrites_a_local_version() -> None:
    with pytest.raises(ConflictError, match=r"m@v2 differs here .* and on origin .*pull origin m --as NEW"):
        incoming("m", _history("a", "b", "c"), _history("a", "f"), "origin")


def test_a_renamed_history_is_a_valid_hash_chain_under_the_new_name() -> None:
    theirs = renamed(_history("a", "f"), "m-origin")
    assert [(e.name, e.target) for e in theirs] == [
        ("m-origin", "blake3:" + "a" * 64),
        ("m-origin", "blake3:" + "f" * 64),
    ]
    digests = {e.version: entry_digest(e) for e in theirs}
    assert History("m-origin", theirs, digests).problems() == []
    assert History("m", _history("a", "f"), digests).problems() != []  # the old chain does not fit the new bytes
