"""The remotes a store knows: names → URLs, kept in the store's `remotes.json`.

The file is small JSON, replaced atomically by every change, e.g.
`{"remotes": {"origin": {"url": "s3://bucket/banks", "lazy": false}}}`. `lazy` is set by
`pull --lazy`: objects missing from the store may then be fetched from that remote when
something reads them (see `lazy`). Nothing here caches what a remote holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InputError, NotFoundError
from ..names import check_ref_name, looks_like_path
from ..settings import read_settings, write_settings
from ..store import Store
from .urls import normalize

REMOTES_FILE = "remotes.json"


@dataclass(frozen=True)
class Remote:
    """A named remote. `lazy`: objects may be fetched from it on demand."""

    name: str
    url: str
    lazy: bool = False


def load(store: Store) -> dict[str, Remote]:
    """Every remote the store knows, by name."""
    document = read_settings(store, REMOTES_FILE, "the remotes file")
    if document is None:
        return {}
    try:
        entries = document["remotes"].items()
        return {name: Remote(name, entry["url"], bool(entry.get("lazy"))) for name, entry in entries}
    except (KeyError, TypeError, AttributeError):
        raise InputError(f"{store.url}/{REMOTES_FILE}: expected {{'remotes': {{NAME: {{'url': URL}}}}}}") from None


def _save(store: Store, remotes: dict[str, Remote]) -> None:
    document = {"remotes": {name: {"url": r.url, "lazy": r.lazy} for name, r in sorted(remotes.items())}}
    write_settings(store, REMOTES_FILE, document)


def add(store: Store, name: str, url: str) -> Remote:
    """Record remote `name` at `url` (checked and made canonical; nothing is contacted)."""
    check_ref_name(name, "remote")
    remotes = load(store)
    if name in remotes:
        raise InputError(f"remote {name!r} already exists ({remotes[name].url}); remove it first")
    remotes[name] = Remote(name, normalize(url))
    _save(store, remotes)
    return remotes[name]


def remove(store: Store, name: str) -> Remote:
    """Forget remote `name` (the remote itself is untouched)."""
    remotes = load(store)
    removed = remotes.pop(name, None)
    if removed is None:
        raise NotFoundError(f"no remote named {name!r}")
    _save(store, remotes)
    return removed


def find(store: Store, name_or_url: str) -> Remote:
    """A remote by name, or an unnamed one for a URL (or a folder's path) given instead of a name."""
    if "://" in name_or_url or looks_like_path(name_or_url):
        return Remote("", normalize(name_or_url))
    remote = load(store).get(name_or_url)
    if remote is None:
        raise NotFoundError(f"no remote named {name_or_url!r} (add it with: weightbank remote add NAME URL)")
    return remote


def mark_lazy(store: Store, name: str) -> None:
    """Record that objects missing from `store` may be fetched from remote `name`."""
    remotes = load(store)
    if not remotes[name].lazy:
        remotes[name] = replace(remotes[name], lazy=True)
        _save(store, remotes)
