"""A store: objects, manifests, their signatures and refs on one backend, and ref resolution across them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .backends import Backend, LocalBackend, open_backend
from .banks import Bank
from .digest import PREFIX
from .errors import ConflictError, InputError, NotFoundError
from .hash_cache import HashCache
from .manifests import MANIFESTS_DIR, ManifestStore, manifest_path
from .names import check_ref_name
from .naming import close_names, with_article
from .objects import ObjectStore
from .provenance import current_agent, parents_of, utc_now
from .refs import TOMBSTONE, RefEntry, RefStore, parse_ref
from .signatures import SignatureStore

ENV_HOME = "WEIGHTBANK_HOME"
_HEX_PREFIX = re.compile(r"[0-9a-f]{8,64}")


def default_location() -> str:
    """`$WEIGHTBANK_HOME`, else `~/.cache/weightbank`."""
    return os.environ.get(ENV_HOME) or str(Path.home() / ".cache" / "weightbank")


class Store:
    """Objects, manifests, signatures and refs under one root (a folder or any fsspec URL)."""

    def __init__(
        self, location: str | Path | None = None, backend: Backend | None = None, *, fetch_lazily: bool = True
    ) -> None:
        """`fetch_lazily`: bring missing objects in from the remotes this store was lazily
        pulled from (off for a remote opened as the other side of a transfer: it is only read)."""
        self.backend = backend or open_backend(location or default_location())
        self.objects = ObjectStore(self.backend, fetch=self._fetch_missing if fetch_lazily else None)
        self.manifests = ManifestStore(self.backend)
        self.refs = RefStore(self.backend)
        self.signatures = SignatureStore(self.backend)
        self.progress = False  # progress bars for objects fetched on demand (see remotes.lazy)

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
        """The manifest digest a ref names: `NAME`, `NAME@latest`, `NAME@vN`, `blake3:<hex or unique
        prefix>`, or a bare unique prefix of 8+ hex digits where no ref has that name."""
        return self.resolve_entry(ref)[0]

    def resolve_entry(self, ref: str) -> tuple[str, RefEntry | None]:
        """The digest a ref names, and the ref entry it came through (None for digests).
        Removed versions do not resolve: NotFoundError names the tombstone."""
        spec = parse_ref(ref)
        if spec.digest is not None:
            return self._expand_digest(spec.digest), None
        assert spec.name is not None
        bare_hex = spec.text == spec.name and _HEX_PREFIX.fullmatch(spec.name) is not None
        versions = self.refs.versions(check_ref_name(spec.name))
        if not versions:
            if bare_hex:  # `78ba1c2d…`: a digest prefix, as git takes an abbreviated hash
                return self._expand_digest(PREFIX + spec.name), None
            raise NotFoundError(
                f"no ref named {spec.name!r} in the store at {self.url}" + close_names(spec.name, self.refs.names())
            )
        if bare_hex and self._digest_matches(spec.name):
            raise InputError(
                f"{spec.name!r} is both a ref name and a manifest digest prefix: write {spec.name}@latest for the "
                f"ref or blake3:{spec.name} for the manifest"
            )
        if spec.version is not None and spec.version > versions[-1]:
            raise NotFoundError(
                f"ref {spec.name}@v{spec.version} does not exist (its history goes up to v{versions[-1]})"
            )
        entry = self.refs.resolve(spec.name, spec.version)
        return entry.manifest, entry

    def _digest_matches(self, hex_prefix: str) -> list[str]:
        """Manifest digests that start with `hex_prefix`."""
        folder = self.backend.list_dir(f"{MANIFESTS_DIR}/{hex_prefix[:2]}")
        return [PREFIX + name for name in folder if name.startswith(hex_prefix)]

    def _expand_digest(self, prefix: str) -> str:
        hex_prefix = prefix[len(PREFIX) :]
        if len(hex_prefix) == 64:
            if not self.manifests.has(prefix):
                raise NotFoundError(f"no manifest {prefix} in the store at {self.url}")
            return prefix
        matches = self._digest_matches(hex_prefix)
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
            raise InputError(f"{ref} names {with_article(document['kind'])} manifest, not a bank")
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
        force_type: bool = False,
    ) -> RefEntry:
        """Append a version of `name` pointing at manifest `target` (compare-and-swap).

        `version` defaults to the next one; if another writer publishes it first, ConflictError
        says so and `target` stays stored, unnamed. A new version keeps the kind of bank the
        ref holds (a base stays a base) unless `force_type`.
        """
        check_ref_name(name)
        if not self.manifests.has(target):
            raise NotFoundError(f"cannot point {name!r} at {target}: no such manifest in the store")
        self.pin(target)
        last, last_digest = self._last(name)
        if not force_type and last is not None:
            self.check_type(name, _kind_of(self.manifests.get(target)))
        try:
            entry = RefEntry(
                name=name,
                version=self._next_version(name, last, version),
                target=target,
                action=action,
                time=utc_now(),
                agent=current_agent(),
                message=message,
                rollback_to=rollback_to,
                previous=last_digest,
            )
            return self.refs.append(entry)
        except ConflictError as exc:
            raise ConflictError(f"{exc}; {target} is stored but not named — run the command again") from None

    def pin(self, target: str) -> None:
        """Mark manifest `target`, its ancestors and every object they name as used, so that a
        gc running now keeps them all (the writer's half of the protocol in `gc`; local stores
        only). NotFoundError if one is already gone: nothing is named, run the command again."""
        if not self.backend.freshens:
            return
        pending, seen, pinned = [target], set(), set[str]()
        lazily: bool | None = None
        while pending:
            digest = pending.pop()
            if digest in seen:
                continue
            seen.add(digest)
            if not self.backend.freshen(manifest_path(digest)):
                raise NotFoundError(f"manifest {digest} went missing (a concurrent gc?): run the command again")
            document = self.manifests.get(digest)
            if document["kind"] == "bank":
                for obj in Bank(digest, document).object_digests() - pinned:  # versions share most objects
                    pinned.add(obj)
                    if self.objects.reuse(obj):
                        continue
                    lazily = self._pulled_lazily() if lazily is None else lazily
                    if not lazily:
                        raise NotFoundError(f"object {obj} went missing (a concurrent gc?): run the command again")
            pending.extend(parent["digest"] for parent in parents_of(document))

    def _pulled_lazily(self) -> bool:
        """Whether objects may be missing on purpose (a remote was pulled with --lazy)."""
        from .remotes import config  # remotes build on Store

        return self.objects.fetch is not None and any(remote.lazy for remote in config.load(self).values())

    def remove(
        self, name: str, versions: list[int] | None = None, *, purge: bool = False, message: str = ""
    ) -> RefEntry:
        """Append a tombstone removing `versions` of `name` (default: every live version).
        Removed versions stop resolving; gc may collect what only they reached once the
        tombstone is older than its grace period. With `purge` (whole refs only) gc also
        deletes the history, and the name is free again."""
        history = self.refs.history(check_ref_name(name))
        live = [entry.version for entry in history.live()]
        if versions is None:
            if not live:
                raise NotFoundError(f"{name} has no versions left to remove")
            removes = live
        else:
            for number in versions:
                history.resolve(number)  # refuses tombstones, removed and unknown versions
            removes = sorted(set(versions))
        if purge and removes != live:
            raise InputError(f"--purge removes a whole ref: give {name}, not single versions")
        last = history.last
        assert last is not None
        entry = RefEntry(
            name=name,
            version=last.version + 1,
            target=None,
            action=TOMBSTONE,
            time=utc_now(),
            agent=current_agent(),
            message=message,
            previous=history.digests[last.version],
            removes=tuple(removes),
            purge=purge,
        )
        return self.refs.append(entry)

    def _last(self, name: str) -> tuple[RefEntry | None, str | None]:
        """The newest entry of `name` and the digest of its bytes (what the next one chains to)."""
        versions = self.refs.versions(name)
        if not versions:
            return None, None
        return self.refs.read(name, versions[-1])

    @staticmethod
    def _next_version(name: str, last: RefEntry | None, asked: int | None) -> int:
        expected = last.version + 1 if last else 1
        if asked is None or asked == expected:
            return expected
        if asked < expected:
            raise ConflictError(f"ref {name!r} was updated concurrently: v{asked} already exists")
        raise InputError(f"cannot record {name}@v{asked}: the next version of {name} is v{expected}")

    def check_type(self, name: str, kind: str) -> None:
        """Refuse a new version of `name` holding another kind of bank (`base`, `adapter`, …,
        `composition`) than its current one: a typo must not turn a base into an adapter."""
        head = self.refs.head(name)
        if head is None:
            return
        held = _kind_of(self.manifests.get(head.manifest))
        if held != kind:
            raise InputError(
                f"{name} holds {held} banks ({head.label} is {_article(held)} {held}); refusing to record "
                f"{_article(kind)} {kind} as its next version — use another name, or --force-type"
            )


def _kind_of(document: dict[str, object]) -> str:
    """`base`, `adapter`, … for banks; `composition` for compositions."""
    return str(document.get("type", document["kind"]))


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
