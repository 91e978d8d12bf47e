"""A store: objects, manifests and refs on one backend, and ref resolution across them."""

from __future__ import annotations

import os
from pathlib import Path

from .backends import Backend, LocalBackend, open_backend
from .banks import Bank
from .digest import PREFIX
from .errors import ConflictError, InputError, NotFoundError
from .hash_cache import HashCache
from .manifests import MANIFESTS_DIR, ManifestStore
from .names import check_ref_name
from .objects import ObjectStore
from .provenance import current_agent, utc_now
from .refs import RefEntry, RefStore, parse_ref

ENV_HOME = "WEIGHTBANK_HOME"


def default_location() -> str:
    """`$WEIGHTBANK_HOME`, else `~/.cache/weightbank`."""
    return os.environ.get(ENV_HOME) or str(Path.home() / ".cache" / "weightbank")


class Store:
    """Objects, manifests and refs under one root (a folder or any fsspec URL)."""

    def __init__(
        self, location: str | Path | None = None, backend: Backend | None = None, *, fetch_lazily: bool = True
    ) -> None:
        """`fetch_lazily`: bring missing objects in from the remotes this store was lazily
        pulled from (off for a remote opened as the other side of a transfer: it is only read)."""
        self.backend = backend or open_backend(location or default_location())
        self.objects = ObjectStore(self.backend, fetch=self._fetch_missing if fetch_lazily else None)
        self.manifests = ManifestStore(self.backend)
        self.refs = RefStore(self.backend)

    @property
    def url(self) -> str:
        return self.backend.url

    def _fetch_missing(self, digest: str) -> bool:
        """Bring a missing object in from a remote this store was lazily pulled from."""
        from .remotes.lazy import fetch_object  # remotes build on Store: imported on a miss only

        return fetch_object(self, digest)

    def hash_cache(self) -> HashCache | None:
        """The remembered digests of local checkpoint files (local stores only)."""
        if isinstance(self.backend, LocalBackend):
            return HashCache(self.backend.root / "state" / "hashes.sqlite")
        return None

    def resolve(self, ref: str) -> str:
        """The manifest digest a ref names (`NAME`, `NAME@vN`, `blake3:<hex or unique prefix>`)."""
        return self.resolve_entry(ref)[0]

    def resolve_entry(self, ref: str) -> tuple[str, RefEntry | None]:
        """The digest a ref names, and the ref entry it came through (None for digests)."""
        spec = parse_ref(ref)
        if spec.digest is not None:
            return self._expand_digest(spec.digest), None
        assert spec.name is not None
        if spec.version is None:
            entry = self.refs.head(spec.name)
            if entry is None:
                raise NotFoundError(f"no ref named {spec.name!r} in the store at {self.url}")
        else:
            entry = self.refs.get(spec.name, spec.version)
        return entry.target, entry

    def _expand_digest(self, prefix: str) -> str:
        hex_prefix = prefix[len(PREFIX) :]
        if len(hex_prefix) == 64:
            if not self.manifests.has(prefix):
                raise NotFoundError(f"no manifest {prefix} in the store at {self.url}")
            return prefix
        matches = [
            PREFIX + name
            for name in self.backend.list_dir(f"{MANIFESTS_DIR}/{hex_prefix[:2]}")
            if name.startswith(hex_prefix)
        ]
        if not matches:
            raise NotFoundError(f"no manifest matches {prefix} in the store at {self.url}")
        if len(matches) > 1:
            raise InputError(f"digest prefix {prefix} is ambiguous ({len(matches)} manifests match); give more digits")
        return matches[0]

    def bank(self, ref: str) -> Bank:
        """The bank manifest a ref names, verified."""
        digest = self.resolve(ref)
        document = self.manifests.get(digest)
        if document["kind"] != "bank":
            raise InputError(f"{ref} names a {document['kind']} manifest, not a bank")
        return Bank(digest, document)

    def record(
        self,
        name: str,
        target: str,
        *,
        action: str,
        message: str = "",
        version: int | None = None,
        rollback_to: int | None = None,
    ) -> RefEntry:
        """Append a version of `name` pointing at manifest `target` (compare-and-swap).

        `version` defaults to one past the current head; if another writer publishes that
        version first, ConflictError says so and `target` stays stored, unnamed.
        """
        check_ref_name(name)
        if not self.manifests.has(target):
            raise NotFoundError(f"cannot point {name!r} at {target}: no such manifest in the store")
        if version is None:
            head = self.refs.head(name)
            version = head.version + 1 if head else 1
        entry = RefEntry(
            name=name,
            version=version,
            target=target,
            action=action,
            time=utc_now(),
            agent=current_agent(),
            message=message,
            rollback_to=rollback_to,
        )
        try:
            return self.refs.append(entry)
        except ConflictError as exc:
            raise ConflictError(f"{exc}; {target} is stored but not named — run the command again") from None
