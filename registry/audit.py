"""Integrity checks: `audit` re-verifies one bank's closure, `fsck` the whole store.

Both re-hash every object they reach, validate every manifest and ref entry against its
schema, check that tensor objects hold the dtype and shape their manifest claims, that
every parent is present, and that every signature attached to a manifest holds (intact, by
the key it names, over that manifest; see `signatures`). Under a trust policy, audit also
refuses banks that are not signed by a trusted key (see `trust`). Problems are collected,
not raised, so one run names them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backends import LocalBackend
from .banks import Bank
from .digest import short
from .errors import WeightbankError
from .naming import names_by_target
from .progress import Advance, step_progress
from .provenance import parents_of
from .refs import parse_ref
from .signatures import VALID
from .store import Store
from .trust import TrustPolicy, refusals_in_store


@dataclass(frozen=True)
class Problem:
    """One thing found wrong: what (`subject`) and why (`detail`)."""

    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.detail}"


@dataclass
class CheckReport:
    """The outcome of an audit or fsck."""

    manifests: int = 0
    objects: int = 0
    refs: int = 0
    signatures: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not damage

    bad_objects: list[str] = field(default_factory=list)  # missing or damaged, by digest

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "manifests": self.manifests,
            "objects": self.objects,
            "refs": self.refs,
            "signatures": self.signatures,
            "problems": [{"subject": p.subject, "detail": p.detail} for p in self.problems],
            "notes": self.notes,
        }


class _Checker:
    """Verifies manifests and objects, each at most once, recording problems."""

    def __init__(self, store: Store, names: dict[str, list[str]], advance: Advance = lambda _n: None) -> None:
        self.store = store
        self.names = names
        self.advance = advance  # one step per object verified
        self.report = CheckReport()
        self.checked_objects: dict[str, bool] = {}
        self.checked_manifests: set[str] = set()

    def label(self, digest: str) -> str:
        names = self.names.get(digest)
        return f"manifest {digest}" + (f" ({', '.join(names)})" if names else "")

    def verify_object(self, digest: str) -> bool:
        if digest not in self.checked_objects:
            try:
                self.store.objects.verify(digest)
                self.checked_objects[digest] = True
            except WeightbankError as exc:
                self.checked_objects[digest] = False
                self.report.bad_objects.append(digest)
                self.report.problems.append(Problem(f"object {digest}", str(exc)))
            self.report.objects += 1
            self.advance(1)
        return self.checked_objects[digest]

    def check_manifest(self, digest: str, role: str = "") -> list[str]:
        """Verify one manifest and its objects; return its parents' digests."""
        if digest in self.checked_manifests:
            return []
        self.checked_manifests.add(digest)
        self.report.manifests += 1
        subject = self.label(digest)
        try:
            document = self.store.manifests.get(digest)
        except WeightbankError as exc:
            detail = f"missing parent ({role})" if role and not self.store.manifests.has(digest) else str(exc)
            self.report.problems.append(Problem(subject, detail))
            return []
        if document["kind"] == "bank":
            self._check_bank(Bank(digest, document), subject)
        self._check_signatures(digest, subject)
        return [parent["digest"] for parent in parents_of(document)]

    def _check_signatures(self, digest: str, subject: str) -> None:
        for check in self.store.signatures.checks(digest):
            self.report.signatures += 1
            if check.status != VALID:
                self.report.problems.append(Problem(f"signature {check.digest} of {subject}", f"{check.problem}"))

    def _check_bank(self, bank: Bank, subject: str) -> None:
        for name, record in bank.tensors.items():
            if not self.verify_object(record.digest):
                self.report.problems.append(Problem(subject, f"tensor {name!r}: object {short(record.digest)} is bad"))
                continue
            try:
                entry = self.store.objects.tensor_entry(record.digest)
            except WeightbankError as exc:
                self.report.problems.append(Problem(subject, f"tensor {name!r}: {exc}"))
                continue
            if (entry.dtype, entry.shape, entry.nbytes) != (record.dtype, record.shape, record.bytes):
                self.report.problems.append(
                    Problem(
                        subject,
                        f"tensor {name!r}: object holds {entry.dtype}{list(entry.shape)}, manifest says "
                        f"{record.dtype}{list(record.shape)}",
                    )
                )
        for path, file_record in bank.files.items():
            if not self.verify_object(file_record.digest):
                self.report.problems.append(
                    Problem(subject, f"file {path!r}: object {short(file_record.digest)} is bad")
                )

    def walk(self, roots: list[str]) -> None:
        pending = [(digest, "") for digest in roots]
        while pending:
            digest, role = pending.pop()
            parents = self.check_manifest(digest, role)
            pending.extend((parent, "parent") for parent in parents)


def audit(store: Store, ref: str, *, show_progress: bool = False, policy: TrustPolicy | None = None) -> CheckReport:
    """Re-verify everything `ref` depends on: its manifest, parents, all their objects and
    signatures; for a ref name, its history too (links, gaps, the head record). With a
    `policy`, every manifest it refuses is a problem too."""
    root = store.resolve(ref)
    names = names_by_target(store)
    with step_progress(0, f"audit {ref}", show_progress, unit="object") as advance:
        checker = _Checker(store, names, advance)
        name = parse_ref(ref).name
        if name is not None:
            _check_history(store, name, checker.report)
        checker.walk([root])
    if policy is not None:
        for refusal in refusals_in_store(store, [root], policy, names):
            via = f" ({refusal.label})" if refusal.label and refusal.digest not in names else ""
            subject = checker.label(refusal.digest) + via
            checker.report.problems.append(Problem(subject, f"not accepted by the trust policy: {refusal.reason}"))
    return checker.report


def _check_history(store: Store, name: str, report: CheckReport) -> None:
    """Problems of one ref's history, and of live versions whose manifest is missing."""
    history, unreadable = store.refs.scan(name)
    report.refs += len(history.entries) + len(unreadable)
    report.problems += [Problem(f"ref {name}", detail) for detail in unreadable + history.problems()]
    for entry in history.live():
        if not store.manifests.has(entry.manifest):
            report.problems.append(Problem(f"ref {entry.label}", f"target {entry.target} is missing"))


def fsck(store: Store, *, show_progress: bool = False) -> CheckReport:
    """Verify the whole store: every ref history, manifest and object; temporaries that killed
    writers left behind are noted (the next writer or gc removes them)."""
    with step_progress(0, "fsck", show_progress, unit="object") as advance:
        return _fsck(store, _Checker(store, names_by_target(store), advance))


def _fsck(store: Store, checker: _Checker) -> CheckReport:
    for name in store.refs.names():
        _check_history(store, name, checker.report)
    checker.walk(list(store.manifests))
    for digest in store.objects:
        checker.verify_object(digest)
    checker.report.notes += [
        f"signature {signature} of missing manifest {manifest}: gc removes it"
        for manifest, signature in store.signatures
        if manifest not in checker.checked_manifests
    ]
    backend = store.backend
    if isinstance(backend, LocalBackend):
        checker.report.notes += [
            f"{path}: left by a writer that is gone; gc removes it" for path in backend.stale_temporaries()
        ]
    return checker.report
