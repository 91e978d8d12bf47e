"""Refs: names for manifests, with an append-only version history.

A ref `NAME` is a folder `refs/NAME/` of create-only entries `v00000001`, `v00000002`, …;
each entry is a MES v1 ref-entry document naming a manifest digest. Creating version N is a
compare-and-swap: the entry is published with a create-only write, so of two writers racing
for the same N exactly one succeeds and the other gets ConflictError. Nothing is ever
deleted; `rollback` appends an entry that points back. The one rewrite is `replace`, which
`pull` uses to renumber local versions that were never pushed (see `remotes.history`).

Ref syntax accepted everywhere: `NAME` (latest), `NAME@vN` (or `NAME@N`), `blake3:<hex>`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .backends import Backend
from .errors import ConflictError, InputError, IntegrityError, NotFoundError
from .manifests import canonical_json, validate
from .names import REF_NAME, check_ref_name

REFS_DIR = "refs"
_ENTRY_NAME = re.compile(r"v(\d{8})")
_DIGEST_PREFIX = re.compile(r"blake3:[0-9a-f]{8,64}")
_REF_SPEC = re.compile(rf"(?P<name>{REF_NAME.pattern})(?:@v?(?P<version>\d+))?")


@dataclass(frozen=True)
class RefSpec:
    """A parsed ref: either a digest (possibly abbreviated), or a name with an optional version."""

    text: str
    name: str | None = None
    version: int | None = None
    digest: str | None = None


def parse_ref(text: str) -> RefSpec:
    """Parse `NAME`, `NAME@vN`, `NAME@N` or `blake3:<hex>` (a unique prefix of 8+ hex digits will do)."""
    if text.startswith("blake3:"):
        if not _DIGEST_PREFIX.fullmatch(text):
            raise InputError(f"invalid digest ref {text!r}: expected blake3: and 8 to 64 lowercase hex digits")
        return RefSpec(text, digest=text)
    match = _REF_SPEC.fullmatch(text)
    if not match or ".." in text:
        raise InputError(f"invalid ref {text!r}: expected NAME, NAME@vN or blake3:<hex>")
    version = match["version"]
    if version is not None and int(version) < 1:
        raise InputError(f"invalid ref {text!r}: versions start at v1")
    return RefSpec(text, name=match["name"], version=int(version) if version else None)


@dataclass(frozen=True)
class RefEntry:
    """One version of a ref."""

    name: str
    version: int
    target: str
    action: str
    time: str
    agent: str
    message: str = ""
    rollback_to: int | None = None

    def to_document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mes_version": "1",
            "kind": "ref",
            "name": self.name,
            "version": self.version,
            "target": self.target,
            "action": self.action,
            "time": self.time,
            "agent": self.agent,
        }
        if self.message:
            document["message"] = self.message
        if self.rollback_to is not None:
            document["rollback_to"] = self.rollback_to
        return document

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RefEntry:
        return cls(
            name=document["name"],
            version=document["version"],
            target=document["target"],
            action=document["action"],
            time=document["time"],
            agent=document["agent"],
            message=document.get("message", ""),
            rollback_to=document.get("rollback_to"),
        )


def entry_path(name: str, version: int) -> str:
    return f"{REFS_DIR}/{name}/v{version:08d}"


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

    def get(self, name: str, version: int) -> RefEntry:
        path = entry_path(name, version)
        try:
            data = self.backend.read_bytes(path)
        except FileNotFoundError:
            if not self.versions(name):
                raise NotFoundError(f"no ref named {name!r}") from None
            raise NotFoundError(f"ref {name}@v{version} does not exist") from None
        what = f"ref entry {name}@v{version}"
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IntegrityError(f"{what} is not JSON ({exc})") from None
        validate(document, "ref-entry", what)
        entry = RefEntry.from_document(document)
        if (entry.name, entry.version) != (name, version):
            raise IntegrityError(f"{what} is stored under the wrong name: it says {entry.name}@v{entry.version}")
        return entry

    def entries(self, name: str) -> list[RefEntry]:
        """Every version of a ref, oldest first (empty if the name is unused)."""
        return [self.get(name, version) for version in self.versions(check_ref_name(name))]

    def history(self, name: str) -> list[RefEntry]:
        """Every version of a ref, oldest first; NotFoundError if the name is unused."""
        entries = self.entries(name)
        if not entries:
            raise NotFoundError(f"no ref named {name!r}")
        return entries

    def head(self, name: str) -> RefEntry | None:
        """The latest version of a ref, or None if the name is unused."""
        versions = self.versions(check_ref_name(name))
        return self.get(name, versions[-1]) if versions else None

    def append(self, entry: RefEntry) -> RefEntry:
        """Publish `entry` as version `entry.version`; ConflictError if that version exists."""
        try:
            self.backend.create_exclusive(entry_path(entry.name, entry.version), encode_entry(entry))
        except FileExistsError:
            raise ConflictError(
                f"ref {entry.name!r} was updated concurrently: v{entry.version} already exists"
            ) from None
        return entry

    def replace(self, entry: RefEntry) -> RefEntry:
        """Overwrite version `entry.version` atomically. Only for renumbering local versions
        that no remote has seen (pull moves them after the remote's); everything else appends."""
        self.backend.write_atomic(entry_path(entry.name, entry.version), [encode_entry(entry)])
        return entry


def encode_entry(entry: RefEntry) -> bytes:
    """The canonical bytes of a ref entry, validated."""
    document = entry.to_document()
    validate(document, "ref-entry", f"ref entry {entry.name}@v{entry.version}")
    return canonical_json(document)
