"""Garbage collection: remove what no live version of any ref reaches.

Roots are the targets of every live ref version, and of versions removed by a tombstone
younger than the grace period (`rm` is only final once its grace period has passed: a
compose started just before can still read what it removed). Reachable = the roots, their
parents (transitively), and every object those manifests name. A signature lives as long as
the manifest it is attached to: gc keeps the signatures of every manifest it keeps, and
removes those of the manifests it removes (and those whose manifest is already gone).

gc and writers follow one protocol, so a gc running beside an ingest, a pull or a compose
never deletes what they are about to name (dvc#2325, and what git's "freshening" does):
- a writer that reuses an object or manifest already in the store marks it used
  (`Backend.freshen`, its mtime), and before publishing a ref it marks the new manifest's
  whole closure (`Store.pin`); `sign` marks the manifest before attaching a signature; what
  a writer writes new is young anyway;
- gc removes a file only if it is older than the grace period *after* it has been moved out
  of its name (`Backend.remove_unless_fresh`): a writer that freshened it before the move is
  seen, and one that comes after finds it gone and writes it again.
The grace period is the slack of this protocol (a writer that stalls longer than it between
pinning and publishing could lose the race), so `--grace 0` is only for a store nothing
writes to. On object stores (S3) files cannot be freshened cheaply, so there gc relies on
the grace period alone: run it when nothing writes to that store.

Removal order keeps every state on the way consistent, so a killed gc leaves nothing that
fsck calls damaged and the next gc finishes the job: tombstones for `--keep-last` first,
then the signatures of doomed manifests (a signature names its manifest, as a child names
its parents), then manifests (children before their parents), then objects, then purged
ref histories.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .backends import LocalBackend
from .banks import Bank
from .errors import InputError, WeightbankError
from .manifests import MANIFESTS_DIR, manifest_path
from .objects import OBJECTS_DIR, object_path
from .provenance import parents_of
from .refs import REFS_DIR, History
from .signatures import signature_path
from .store import Store
from .temporaries import TEMP_PREFIX

DEFAULT_GRACE_SECONDS = 3600.0
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `1h`, `2d`, `1w` → seconds."""
    match = _DURATION.fullmatch(text.lower())
    if not match:
        raise InputError(
            f"invalid duration {text!r}: expected a number with an optional unit s, m, h, d or w (e.g. 2d)"
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]


@dataclass
class GcReport:
    """What gc removed (or, with dry_run, would remove)."""

    dry_run: bool
    objects: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)  # digests of the signatures removed
    temporaries: list[str] = field(default_factory=list)
    bytes: int = 0
    kept_young: int = 0
    thinned: list[str] = field(default_factory=list)  # versions `--keep-last` removed ("name@vN")
    purged: list[str] = field(default_factory=list)  # refs whose history was deleted

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "objects": self.objects,
            "manifests": self.manifests,
            "signatures": self.signatures,
            "temporaries": self.temporaries,
            "bytes": self.bytes,
            "kept_young": self.kept_young,
            "thinned": self.thinned,
            "purged": self.purged,
        }


def _timestamp(utc: str) -> float:
    return datetime.strptime(utc[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def root_targets(history: History, cutoff: float) -> list[str]:
    """The manifests one ref keeps: its live versions', and those of versions removed by a
    tombstone younger than `cutoff`."""
    roots = []
    for entry in history.entries:
        if entry.target is None:
            continue
        removal = history.removal_of(entry.version)
        if removal is None or _timestamp(removal.time) > cutoff:
            roots.append(entry.target)
    return roots


def reachable(store: Store, histories: dict[str, History], cutoff: float) -> tuple[set[str], set[str]]:
    """(manifests, objects) reachable from the roots of every history.

    Raises if a reachable manifest cannot be read: its objects would be unknown, and
    deleting them would be unrecoverable.
    """
    pending = [target for history in histories.values() for target in root_targets(history, cutoff)]
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


def _histories(store: Store) -> dict[str, History]:
    try:
        return {name: store.refs.history(name) for name in store.refs.names()}
    except WeightbankError as exc:
        raise WeightbankError(f"gc stopped, nothing removed: {exc}") from None


def _thin(store: Store, histories: dict[str, History], keep_last: int, names: list[str], dry_run: bool) -> list[str]:
    """Tombstone every live version of `names` (all refs if empty) but the `keep_last` newest."""
    thinned = []
    for name in names or sorted(histories):
        if name not in histories:
            raise InputError(f"gc --ref {name}: no ref named {name!r}")
        old = [entry.version for entry in histories[name].live()][:-keep_last] if keep_last else []
        if not old:
            continue
        thinned += [f"{name}@v{version}" for version in old]
        if not dry_run:
            store.remove(name, old, message=f"gc --keep-last {keep_last}")
            histories[name] = store.refs.history(name)
    return thinned


def _children_first(store: Store, doomed: list[str]) -> list[str]:
    """Unreachable manifests ordered so none is removed while another doomed one names it as a parent."""
    parents: dict[str, set[str]] = {}
    for digest in doomed:
        try:
            parents[digest] = {p["digest"] for p in parents_of(store.manifests.get(digest))}
        except WeightbankError:
            parents[digest] = set()  # unreadable: it names nothing we can know
    named = {digest: 0 for digest in doomed}
    for digest in doomed:
        for parent in parents[digest] & named.keys():
            named[parent] += 1
    order, ready = [], [digest for digest, count in named.items() if count == 0]
    while ready:
        digest = ready.pop()
        order.append(digest)
        for parent in parents[digest] & named.keys():
            named[parent] -= 1
            if named[parent] == 0:
                ready.append(parent)
    return order  # digests cannot form cycles: a manifest names parents that existed before it


def collect_garbage(
    store: Store,
    *,
    dry_run: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    keep_last: int | None = None,
    refs: list[str] | None = None,
) -> GcReport:
    """Remove unreachable objects and manifests older than the grace period, stale temporary
    files and purged ref histories. `keep_last`: first remove (tombstone) all but the N newest
    live versions of `refs` (default every ref); what they reached is collected once the
    grace period has passed."""
    report = GcReport(dry_run=dry_run)
    # Taken before the roots are read: a writer that publishes after that read pinned what it
    # names just before, which is after this moment (give the grace period as slack).
    cutoff = time.time() - grace_seconds
    histories = _histories(store)
    if keep_last is not None:
        report.thinned = _thin(store, histories, keep_last, refs or [], dry_run)
    keep_manifests, keep_objects = reachable(store, histories, cutoff)
    backend = store.backend

    def old_enough(path: str) -> bool:
        if backend.modified(path) <= cutoff:
            return True
        report.kept_young += 1
        return False

    present = list(store.manifests)
    doomed_manifests = [d for d in present if d not in keep_manifests and old_enough(manifest_path(d))]
    doomed_objects = [d for d in store.objects if d not in keep_objects and old_enough(object_path(d))]
    # Signatures of the manifests gc removes, and of manifests already gone that nothing reaches.
    signatures = list(store.signatures)
    unattached = set(doomed_manifests) | ({m for m, _ in signatures} - set(present) - keep_manifests)
    doomed_signatures = [(m, s) for m, s in signatures if m in unattached and old_enough(signature_path(m, s))]
    report.temporaries = _temporaries(store, cutoff)
    purged = [name for name, history in histories.items() if _purge_due(history, cutoff)]
    if dry_run:
        report.manifests, report.objects, report.purged = doomed_manifests, doomed_objects, purged
        report.signatures = [signature for _, signature in doomed_signatures]
        report.bytes = sum(backend.size(manifest_path(d)) for d in doomed_manifests)
        report.bytes += sum(backend.size(signature_path(m, s)) for m, s in doomed_signatures)
        report.bytes += sum(backend.size(object_path(d)) for d in doomed_objects)
        return report
    for manifest, signature in doomed_signatures:
        _remove(backend, signature_path(manifest, signature), cutoff, report, report.signatures, signature)
    for digest in _children_first(store, doomed_manifests):
        _remove(backend, manifest_path(digest), cutoff, report, report.manifests, digest)
    for digest in doomed_objects:
        _remove(backend, object_path(digest), cutoff, report, report.objects, digest)
    for path in report.temporaries:
        backend.remove(path)
    for name in purged:
        history = store.refs.history(name)
        if _purge_due(history, cutoff):  # nobody reused the name meanwhile
            store.refs.remove_history(name, [entry.version for entry in history.entries])
            report.purged.append(name)
    return report


def _remove(backend: Any, path: str, cutoff: float, report: GcReport, removed: list[str], digest: str) -> None:
    try:
        size = backend.size(path)
    except FileNotFoundError:
        return  # another gc was faster
    if backend.remove_unless_fresh(path, cutoff):
        removed.append(digest)
        report.bytes += size
    else:
        report.kept_young += 1


def _purge_due(history: History, cutoff: float) -> bool:
    last = history.last
    return last is not None and last.purge and _timestamp(last.time) <= cutoff


def _temporaries(store: Store, cutoff: float) -> list[str]:
    """Temporary files left by killed writers: in a local store's tmp/ folder (stale by owner
    or age), and under the store's folders on other backends (by age)."""
    backend = store.backend
    if isinstance(backend, LocalBackend):
        return backend.stale_temporaries()
    found = []
    for top in (OBJECTS_DIR, MANIFESTS_DIR, REFS_DIR):
        for path in backend.walk(top):
            if path.rpartition("/")[2].startswith(TEMP_PREFIX) and backend.modified(path) <= cutoff:
                found.append(path)
    return found
