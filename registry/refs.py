"""Refs: names for manifests, with an append-only, hash-chained version history.

A ref `NAME` is a folder `refs/NAME/` of create-only entries `v00000001`, `v00000002`, …;
each entry is a MES v1 ref-entry document. Creating version N is a compare-and-swap: the
entry is published with a create-only write, so of two writers racing for the same N
exactly one succeeds and the other gets ConflictError.

Every entry after the first names the BLAKE3 digest of its predecessor's bytes, and
`refs/NAME/head` records the newest entry a writer published (its version and digest), so a
rewritten entry, a gap in the numbers and a deleted newest entry are all detectable
(`History.problems`). The head record is only a witness: it is written after the entry and
may lag behind it (a writer killed in between), which is harmless.

An entry either points at a manifest (`target`) or is a tombstone (`action: rm`) that
removes earlier versions: a removed version no longer resolves, and gc may collect what only
removed versions reached. Nothing is ever rewritten; the one deletion is gc finishing a
`purge` tombstone (see `gc`).

Ref syntax accepted everywhere: `NAME` or `NAME@latest` (latest), `NAME@vN` (or `NAME@N`),
`blake3:<hex>` (8+ hex digits of it; the store also takes bare hex digits, see `Store.resolve`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend
from .digest import digest_bytes
from .errors import ConflictError, InputError, IntegrityError, NotFoundError, SchemaError
from .json_input import parse_json_object
from .manifests import canonical_json, validate
from .names import REF_NAME, check_ref_name

REFS_DIR = "refs"
HEAD_RECORD = "head"
TOMBSTONE = "rm"
_ENTRY_NAME = re.compile(r"v(\d{8})")
_DIGEST_PREFIX = re.compile(r"blake3:[0-9a-f]{8,64}")
_REF_SPEC = re.compile(rf"(?P<name>{REF_NAME.pattern})(?:@(?:v?(?P<version>\d+)|latest))?")


@dataclass(frozen=True)
class RefSpec:
    """A parsed ref: either a digest (possibly abbreviated), or a name with an optional version."""

    text: str
    name: str | None = None
    version: int | None = None
    digest: str | None = None


def parse_ref(text: str) -> RefSpec:
    """Parse `NAME`, `NAME@latest`, `NAME@vN`, `NAME@N` or `blake3:<hex>` (a unique prefix of 8+
    hex digits will do)."""
    if text.startswith("blake3:"):
        if not _DIGEST_PREFIX.fullmatch(text):
            raise InputError(f"invalid digest ref {text!r}: expected blake3: and 8 to 64 lowercase hex digits")
        return RefSpec(text, digest=text)
    match = _REF_SPEC.fullmatch(text)
    if not match or ".." in text:
        raise InputError(f"invalid ref {text!r}: expected NAME, NAME@vN, NAME@latest or blake3:<hex>")
    version = match["version"]
    if version is not None and int(version) < 1:
        raise InputError(f"invalid ref {text!r}: versions start at v1")
    return RefSpec(text, name=match["name"], version=int(version) if version else None)


@dataclass(frozen=True)
class RefEntry:
    """One version of a ref: a pointer at a manifest (`target`), or a tombstone removing
    earlier versions (`removes`). `previous` is the digest of version - 1's bytes."""

    name: str
    version: int
    target: str | None
    action: str
    time: str
    agent: str
    message: str = ""
    rollback_to: int | None = None
    previous: str | None = None
    removes: tuple[int, ...] = ()
    purge: bool = False

    @property
    def is_tombstone(self) -> bool:
        return self.action == TOMBSTONE

    @property
    def label(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def manifest(self) -> str:
        """The digest a pointer entry names (NotFoundError for a tombstone)."""
        if self.target is None:
            raise NotFoundError(f"{self.label} is a removal record, not a bank")
        return self.target

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mes_version": "1",
            "kind": "ref",
            "name": self.name,
            "version": self.version,
            "action": self.action,
            "time": self.time,
            "agent": self.agent,
        }
        optional = {
            "target": self.target,
            "previous": self.previous,
            "message": self.message or None,
            "rollback_to": self.rollback_to,
            "removes": list(self.removes) or None,
            "purge": self.purge or None,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RefEntry:
        return cls(
            name=document["name"],
            version=document["version"],
            target=document.get("target"),
            action=document["action"],
            time=document["time"],
            agent=document["agent"],
            message=document.get("message", ""),
            rollback_to=document.get("rollback_to"),
            previous=document.get("previous"),
            removes=tuple(document.get("removes", ())),
            purge=bool(document.get("purge", False)),
        )


def encode_entry(entry: RefEntry) -> bytes:
    """The canonical bytes of a ref entry, validated."""
    document = entry.to_document()
    validate(document, "ref-entry", f"ref entry {entry.label}")
    return canonical_json(document)


def entry_digest(entry: RefEntry) -> str:
    """What the next version's `previous` names: the digest of this entry's bytes."""
    return digest_bytes(encode_entry(entry))


def entry_path(name: str, version: int) -> str:
    return f"{REFS_DIR}/{name}/v{version:08d}"


def head_path(name: str) -> str:
    return f"{REFS_DIR}/{name}/{HEAD_RECORD}"


@dataclass(frozen=True)
class HeadRecord:
    """The newest entry a writer published, as that writer saw it."""

    version: int
    digest: str


@dataclass
class History:
    """Every entry of one ref, oldest first, with the head record; answers what is live."""

    name: str
    entries: list[RefEntry]
    digests: dict[int, str] = field(default_factory=dict)  # version -> digest of the stored bytes
    head_record: HeadRecord | None = None
    _removed_by: dict[int, RefEntry] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._removed_by = {v: e for e in self.entries if e.is_tombstone for v in e.removes}

    @property
    def last(self) -> RefEntry | None:
        """The newest entry of any kind (what the next version chains to)."""
        return self.entries[-1] if self.entries else None

    def removal_of(self, version: int) -> RefEntry | None:
        """The tombstone that removed `version`, if any."""
        return self._removed_by.get(version)

    def live(self) -> list[RefEntry]:
        """Pointer entries no tombstone has removed, oldest first."""
        return [e for e in self.entries if not e.is_tombstone and e.version not in self._removed_by]

    def head(self) -> RefEntry | None:
        """What `NAME` resolves to: the newest live pointer, or None."""
        live = self.live()
        return live[-1] if live else None

    @property
    def purged(self) -> bool:
        """Whether the newest entry is a purge tombstone (gc deletes the history)."""
        return self.last is not None and self.last.purge

    def get(self, version: int) -> RefEntry:
        for entry in self.entries:
            if entry.version == version:
                return entry
        raise NotFoundError(f"ref {self.name}@v{version} does not exist")

    def resolve(self, version: int | None) -> RefEntry:
        """The live pointer `NAME` (None) or `NAME@vN` names; NotFoundError saying why not."""
        if version is None:
            head = self.head()
            if head is None:
                last = self.last
                assert last is not None
                raise NotFoundError(
                    f"{self.name} was removed ({last.label}: rm by {last.agent} at {last.time}); "
                    f"`weightbank log {self.name}` shows its history"
                )
            return head
        entry = self.get(version)
        if entry.is_tombstone:
            removed = ", ".join(f"v{v}" for v in entry.removes)
            raise NotFoundError(f"{entry.label} is a removal record (it removed {removed}), not a bank")
        removal = self.removal_of(version)
        if removal is not None:
            raise NotFoundError(
                f"{entry.label} was removed by {removal.label} (rm by {removal.agent} at {removal.time})"
            )
        return entry

    def problems(self) -> list[str]:
        """Damage to the history: gaps, broken links, a head record naming what is not there."""
        digests = self.digests
        problems: list[str] = []
        versions = [e.version for e in self.entries]
        purging = self.purged  # gc deletes a purged history oldest first: a missing prefix is fine
        first = versions[0] if versions else 1
        if first != 1 and not purging:
            problems.append(f"versions v1..v{first - 1} are missing (truncated history)")
        for before, after in zip(self.entries, self.entries[1:], strict=False):
            if after.version != before.version + 1:
                problems.append(f"versions v{before.version + 1}..v{after.version - 1} are missing (gap)")
            elif after.previous != digests[before.version]:
                problems.append(f"v{before.version} was rewritten: v{after.version} names other bytes before it")
        for entry in self.entries:
            for removed in entry.removes:
                if removed >= entry.version or (removed not in versions and not purging):
                    problems.append(f"{entry.label} removes v{removed}, which is not an earlier version")
            if entry.rollback_to is not None and entry.rollback_to >= entry.version:
                problems.append(f"{entry.label} rolls back to v{entry.rollback_to}, which is not an earlier version")
        record = self.head_record
        if record is not None and not purging:
            if record.version not in digests:
                problems.append(f"the head record names v{record.version}, which is missing (truncated history)")
            elif digests[record.version] != record.digest:
                problems.append(f"v{record.version} was rewritten: the head record names other bytes")
        return problems


class RefStore:
    """Named, versioned refs on a backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def names(self) -> list[str]:
        return [name for name in self.backend.list_dir(REFS_DIR) if REF_NAME.fullmatch(name) and self.versions(name)]

    def versions(self, name: str) -> list[int]:
        """Version numbers of a ref, ascending."""
        found = (_ENTRY_NAME.fullmatch(entry) for entry in self.backend.list_dir(f"{REFS_DIR}/{name}"))
        return sorted(int(m[1]) for m in found if m)

    def read(self, name: str, version: int) -> tuple[RefEntry, str]:
        """One entry, validated, and the digest of its bytes."""
        try:
            data = self.backend.read_bytes(entry_path(name, version))
        except FileNotFoundError:
            if not self.versions(name):
                raise NotFoundError(f"no ref named {name!r}") from None
            raise NotFoundError(f"ref {name}@v{version} does not exist") from None
        what = f"ref entry {name}@v{version}"
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise IntegrityError(f"{what} is not JSON ({exc})") from None
        if canonical_json(document) != data:
            raise IntegrityError(f"{what} is not in canonical form (was it edited?)")
        validate(document, "ref-entry", what)
        entry = RefEntry.from_document(document)
        if (entry.name, entry.version) != (name, version):
            raise IntegrityError(f"{what} is stored under the wrong name: it says {entry.name}@v{entry.version}")
        return entry, digest_bytes(data)

    def get(self, name: str, version: int) -> RefEntry:
        """One entry (validated; its links are checked by `history`)."""
        return self.read(name, version)[0]

    def entries(self, name: str) -> list[RefEntry]:
        """Every version of a ref, oldest first (empty if the name is unused)."""
        return [self.get(name, version) for version in self.versions(check_ref_name(name))]

    def head_record(self, name: str) -> HeadRecord | None:
        try:
            raw = self.backend.read_bytes(head_path(name))
        except FileNotFoundError:
            return None
        document = parse_json_object(raw, f"ref {name}", "head record")
        version, digest = document.get("version"), document.get("entry")
        if not isinstance(version, int) or not isinstance(digest, str):
            raise IntegrityError(f"ref {name}: the head record is damaged")
        return HeadRecord(version, digest)

    def scan(self, name: str) -> tuple[History, list[str]]:
        """The history of `name` as stored (empty if unused) and the entries that could not be
        read (one line each); `History.problems` tells the rest of its damage."""
        entries, digests, unreadable = [], {}, []
        for version in self.versions(check_ref_name(name)):
            try:
                entry, digest = self.read(name, version)
            except (IntegrityError, SchemaError) as exc:
                unreadable.append(str(exc))
                continue
            entries.append(entry)
            digests[version] = digest
        try:
            record = self.head_record(name) if entries else None
        except IntegrityError as exc:
            unreadable.append(str(exc))
            record = None
        return History(name, entries, digests, record), unreadable

    def history(self, name: str) -> History:
        """The verified history of `name`: NotFoundError if unused, IntegrityError if damaged."""
        history, unreadable = self.scan(name)
        problems = unreadable or history.problems()
        if problems:
            raise IntegrityError(f"history of ref {name} is damaged: {problems[0]} (run fsck)")
        if not history.entries:
            raise NotFoundError(f"no ref named {name!r}")
        return history

    def head(self, name: str) -> RefEntry | None:
        """What `NAME` resolves to (the newest live pointer), or None if the name is unused or
        everything in it was removed. One read when the newest entry is a live pointer."""
        versions = self.versions(check_ref_name(name))
        if not versions:
            return None
        newest, digest = self.read(name, versions[-1])
        if newest.is_tombstone:
            return self.history(name).head()
        record = self.head_record(name)
        if record is not None and record.version == newest.version and record.digest != digest:
            raise IntegrityError(f"ref {newest.label} was rewritten: the head record names other bytes (run fsck)")
        return newest

    def resolve(self, name: str, version: int | None) -> RefEntry:
        """The live pointer `NAME` or `NAME@vN` names (NotFoundError says why not)."""
        if version is None:
            head = self.head(name)
            if head is not None:
                return head
        return self.history(name).resolve(version)

    def append(self, entry: RefEntry) -> RefEntry:
        """Publish `entry` as version `entry.version`; ConflictError if that version exists.
        The head record follows (a witness for fsck; it may lag if we are killed here)."""
        data = encode_entry(entry)
        try:
            self.backend.create_exclusive(entry_path(entry.name, entry.version), data)
        except FileExistsError:
            raise ConflictError(
                f"ref {entry.name!r} was updated concurrently: v{entry.version} already exists"
            ) from None
        record = {"version": entry.version, "entry": digest_bytes(data)}
        self.backend.write_atomic(head_path(entry.name), [json.dumps(record, sort_keys=True).encode()])
        return entry

    def remove_history(self, name: str, versions: list[int]) -> None:
        """Delete entries of a purged ref, oldest first, the head record before them (gc only)."""
        self.backend.remove(head_path(name))
        for version in sorted(versions):
            self.backend.remove(entry_path(name, version))
