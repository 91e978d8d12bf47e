"""On-demand objects for stores pulled with `--lazy`.

`pull --lazy` copies manifests and ref entries only, and marks the remote lazy in the store's
remotes file. When anything later reads an object the store lacks (the composer loading a
tensor, export, audit), the store's ObjectStore calls `fetch_object`: the object is downloaded
from the first lazy remote that has it, verified against its digest and published in the local
store, where it stays like any other object; a progress bar (terminal only) names each object and its
bytes as it arrives. Composing from a lazily pulled base and a few
adapters therefore downloads exactly the objects the plan reads.
"""

from __future__ import annotations

from functools import cache

from ..digest import short
from ..errors import NotFoundError
from ..progress import byte_progress
from ..store import Store
from . import config
from .transfer import copy_object
from .urls import open_remote


def fetch_object(store: Store, digest: str) -> bool:
    """Download a missing object into `store` from one of its lazy remotes; False if none has it."""
    for remote in config.load(store).values():
        if not remote.lazy:
            continue
        source = _opened(remote.url)
        try:
            size = source.objects.size(digest) if store.progress else 0
            with byte_progress(size, f"fetch {short(digest)} from {remote.name}", store.progress) as advance:
                copy_object(source, store, digest, advance)
        except NotFoundError:
            continue
        return True
    return False


@cache
def _opened(url: str) -> Store:
    """One remote store per URL for the process: a lazy compose fetches object after object."""
    return open_remote(url)
