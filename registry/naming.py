"""Naming manifests for people: the refs that point at a digest, and close names for typos.

Messages name banks as `tiny@v1`, not as 64-hex digests, wherever a ref names them.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from .digest import short

if TYPE_CHECKING:
    from .store import Store


def names_by_target(store: Store) -> dict[str, list[str]]:
    """Manifest digest → every live `NAME@vN` that points at it (removed versions and
    unreadable entries are left out)."""
    names: dict[str, list[str]] = {}
    for name in store.refs.names():
        history, _ = store.refs.scan(name)
        for entry in history.live():
            names.setdefault(entry.manifest, []).append(entry.label)
    return names


def display_name(store: Store, digest: str, names: dict[str, list[str]] | None = None) -> str:
    """`NAME@vN` for a digest a ref points at (of the first such name, its newest version
    that does), else the short digest. `names`: a `names_by_target` already made."""
    found = (names if names is not None else names_by_target(store)).get(digest)
    if not found:
        return short(digest)
    first = found[0].partition("@")[0]
    return [label for label in found if label.partition("@")[0] == first][-1]


def close_names(word: str, candidates: list[str]) -> str:
    """` (did you mean a, b?)` for the candidates close to `word`, or an empty string."""
    scored = sorted(((difflib.SequenceMatcher(None, word, c).ratio(), c) for c in candidates), reverse=True)
    best = scored[0][0] if scored else 0.0
    matches = [c for ratio, c in scored[:3] if ratio >= max(0.5, best - 0.15)]  # the best, and as good
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def with_article(word: str) -> str:
    """`an adapter`, `a base`."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 weight file`, `2 weight files`."""
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"
