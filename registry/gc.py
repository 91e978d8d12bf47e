"""Garbage collection: remove what no version of any ref reaches.

Reachable = every manifest some ref version targets, their parents (transitively), and
every object those manifests name. Unreachable objects and manifests are removed only
once older than a grace period, so a gc racing an ingest or pull (which write objects
before the ref that names them) never deletes their data (see dvc#2325).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .backends import TEMP_PREFIX
from .banks import Bank
from .errors import WeightbankError
from .manifests import MANIFESTS_DIR, manifest_path
from .objects import OBJECTS_DIR, object_path
from .provenance import parents_of
from .refs import REFS_DIR
from .store import Store

DEFAULT_GRACE_SECONDS = 3600.0


@dataclass
class GcReport:
    """What gc removed (or, with dry_run, would remove)."""

    dry_run: bool
    objects: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    bytes: int = 0
    kept_young: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "objects": self.objects,
            "manifests": self.manifests,
            "temporaries": self.temporaries,
            "bytes": self.bytes,
            "kept_young": self.kept_young,
        }


def reachable(store: Store) -> tuple[set[str], set[str]]:
    """(manifests, objects) reachable from any version of any ref.

    Raises if a reachable manifest cannot be read: its objects would be unknown, and
    deleting them would be unrecoverable.
    """
    pending = [entry.target for name in store.refs.names() for entry in store.refs.entries(name)]
    manifests: set[str] = set()
    objects: set[str] = set()
    while pending:
        digest = pending.pop()
        if digest in manifests:
            continue
        manifests.add(digest)
        if not store.manifests.has(digest):
            continue  # a missing parent: fsck reports it; nothing of it to keep
        try:
            document = store.manifests.get(digest)
        except WeightbankError as exc:
            raise WeightbankError(f"gc stopped, nothing removed: {exc} (run fsck)") from None
        if document["kind"] == "bank":
            objects |= Bank(digest, document).object_digests()
        pending.extend(parent["digest"] for parent in parents_of(document))
    return manifests, objects


def collect_garbage(store: Store, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> GcReport:
    """Remove unreachable objects, manifests and stale temporary files older than the grace period."""
    keep_manifests, keep_objects = reachable(store)
    report = GcReport(dry_run=dry_run)
    cutoff = time.time() - grace_seconds
    backend = store.backend

    def old_enough(path: str) -> bool:
        if backend.modified(path) <= cutoff:
            return True
        report.kept_young += 1
        return False

    for digest in list(store.objects):
        path = object_path(digest)
        if digest not in keep_objects and old_enough(path):
            report.objects.append(digest)
            report.bytes += backend.size(path)
    for digest in list(store.manifests):
        path = manifest_path(digest)
        if digest not in keep_manifests and old_enough(path):
            report.manifests.append(digest)
            report.bytes += backend.size(path)
    for top in (OBJECTS_DIR, MANIFESTS_DIR, REFS_DIR):
        for path in backend.walk(top):
            if path.rpartition("/")[2].startswith(TEMP_PREFIX) and backend.modified(path) <= cutoff:
                report.temporaries.append(path)
    if not dry_run:
        for digest in report.objects:
            store.objects.remove(digest)
        for digest in report.manifests:
            store.manifests.remove(digest)
        for path in report.temporaries:
            backend.remove(path)
    return report
