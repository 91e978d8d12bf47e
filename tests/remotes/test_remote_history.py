"""Ref histories across a push or pull: prefixes publish, divergence conflicts on push and is
rebased (renumbered, nothing lost) on pull."""

from __future__ import annotations

import pytest

from weightbank.registry import ConflictError, RefEntry
from weightbank.registry.remotes.history import merge, unpublished


def _history(*targets: str, rollback: dict[int, int] | None = None) -> list[RefEntry]:
    rollback = rollback or {}
    return [
        RefEntry("m", v, "blake3:" + t * 64, "ingest", "2026-01-01T00:00:00Z", "a", rollback_to=rollback.get(v))
        for v, t in enumerate(targets, start=1)
    ]


def test_push_publishes_what_the_remote_lacks_and_refuses_divergence() -> None:
    assert [e.version for e in unpublished("m", _history("a", "b", "c"), _history("a"), "origin")] == [2, 3]
    assert unpublished("m", _history("a"), _history("a", "b"), "origin") == []
    with pytest.raises(ConflictError, match="remote origin has a different v2 of m: pull, then push again"):
        unpublished("m", _history("a", "b"), _history("a", "x"), "origin")


def test_pull_appends_when_the_local_history_is_a_prefix() -> None:
    plan = merge(_history("a"), _history("a", "b", "c"))
    assert [(e.version, overwrite) for e, overwrite in plan.writes] == [(2, False), (3, False)]
    assert plan.moved == []
    assert merge(_history("a", "b"), _history("a")).writes == []


def test_pull_moves_local_only_versions_after_the_remote_ones() -> None:
    ours = _history("a", "b", "c", rollback={3: 2})
    theirs = _history("a", "x")
    plan = merge(ours, theirs)
    assert plan.moved == [(2, 3), (3, 4)]
    written = [(e.version, e.target[-1], overwrite, e.rollback_to) for e, overwrite in plan.writes]
    # highest first, so every local version is copied before its old number is reused
    assert written == [(4, "c", False, 3), (3, "b", True, None), (2, "x", True, None)]
