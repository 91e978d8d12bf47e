"""Manifest signatures: documents saying "this key vouches for this manifest", stored beside it.

A manifest names every object of a bank (and its parents) by digest, so a signature over the
manifest's digest covers the whole bank without reading a tensor byte. Each signature is a
canonical JSON document (MES v1 `signature`) stored as a create-only file of its own, named
by the manifest it is attached to and by its own BLAKE3 digest:

    signatures/<first 2 hex of the manifest>/<manifest hex>.<signature hex>

so any number of signers can sign one manifest, one listing of a shard folder finds the
signatures of every manifest in it (as transfers find objects), and a damaged file is told
from a bad signature. The signed bytes are the canonical JSON of the document without its
`signature` field (see `keys` for the algorithms and key ids).

Whether a signature is *trusted* is the trust policy's question (`trust`); this module only
says whether it holds: intact, made by the key it names, over the manifest it is attached to.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .backends import Backend
from .digest import PREFIX, digest_bytes, hex_of, is_digest
from .errors import NotFoundError, WeightbankError
from .keys import SigningKey, public_key_from_pem
from .manifests import canonical_json, validate
from .provenance import current_agent, utc_now

SIGNATURES_DIR = "signatures"
VALID = "valid"
BAD = "bad"  # damaged, or not made by the key it names
OTHER_MANIFEST = "other manifest"  # a sound signature, attached to a manifest it does not sign


def signature_path(manifest: str, signature: str) -> str:
    """Store path of a signature attached to `manifest`."""
    manifest_hex = hex_of(manifest)
    return f"{SIGNATURES_DIR}/{manifest_hex[:2]}/{manifest_hex}.{hex_of(signature)}"


def _signed_bytes(document: dict[str, Any]) -> bytes:
    return canonical_json({key: value for key, value in document.items() if key != "signature"})


def make_signature(manifest: str, key: SigningKey) -> bytes:
    """The canonical bytes of a signature by `key` over manifest `manifest`."""
    document: dict[str, Any] = {
        "mes_version": "1",
        "kind": "signature",
        "manifest": manifest,
        "key_id": key.public.key_id,
        "algorithm": key.public.algorithm,
        "public_key": key.public.pem,
        "time": utc_now(),
        "agent": current_agent(),
    }
    document["signature"] = base64.b64encode(key.sign(_signed_bytes(document))).decode("ascii")
    validate(document, "signature", "the signature")
    return canonical_json(document)


@dataclass(frozen=True)
class SignatureCheck:
    """One stored signature, checked: `status` is VALID, BAD or OTHER_MANIFEST (`problem` says
    why). `key_id`, `time` and `agent` are what the document claims (None if unreadable)."""

    manifest: str  # the manifest it is attached to
    digest: str  # the signature's own digest (its file name)
    status: str
    key_id: str | None = None
    time: str | None = None
    agent: str | None = None
    signs: str | None = None  # the manifest the document names
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "status": self.status,
            "key_id": self.key_id,
            "time": self.time,
            "agent": self.agent,
            "signs": self.signs,
            "problem": self.problem,
        }


def check_signature(manifest: str, digest: str, data: bytes) -> SignatureCheck:
    """Whether the bytes stored as signature `digest` of `manifest` hold: intact, well formed,
    made by the key they name (its id is recomputed from its public key), over `manifest`."""

    def bad(problem: str, document: dict[str, Any] | None = None) -> SignatureCheck:
        claims = {field: (document or {}).get(field) for field in ("key_id", "time", "agent")}
        return SignatureCheck(manifest, digest, BAD, **claims, signs=(document or {}).get("manifest"), problem=problem)

    try:
        document = json.loads(data)
        if canonical_json(document) != data:
            return bad("it is not in canonical form (was it edited?)")
        validate(document, "signature", "it")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return bad("it is not JSON (damaged?)")
    except WeightbankError as exc:
        return bad(str(exc))
    actual = digest_bytes(data)
    if actual != digest:
        return bad(f"its bytes hash to {actual} (damaged or edited)", document)
    try:
        signer = public_key_from_pem(document["public_key"], "its public key")
    except WeightbankError as exc:
        return bad(str(exc), document)
    if signer.key_id != document["key_id"] or signer.algorithm != document["algorithm"]:
        return bad("its key id or algorithm does not match its public key", document)
    try:
        value = base64.b64decode(document["signature"], validate=True)
    except binascii.Error:
        return bad("its signature is not base64", document)
    if not signer.verifies(value, _signed_bytes(document)):
        return bad("the signature does not verify with its key", document)
    claims = {field: document[field] for field in ("key_id", "time", "agent")}
    if document["manifest"] != manifest:
        problem = f"it signs manifest {document['manifest']}, not this one"
        return SignatureCheck(manifest, digest, OTHER_MANIFEST, **claims, signs=document["manifest"], problem=problem)
    return SignatureCheck(manifest, digest, VALID, **claims, signs=manifest)


class SignatureStore:
    """Signatures attached to manifests, on a backend (see the module docstring)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def add(self, manifest: str, data: bytes) -> tuple[str, bool]:
        """Attach signature bytes to `manifest` (create-only); (its digest, whether it was new)."""
        digest = digest_bytes(data)
        try:
            self.backend.create_exclusive(signature_path(manifest, digest), data)
        except FileExistsError:
            return digest, False  # the same bytes: the name is their digest
        return digest, True

    def attached(self, manifests: Iterable[str]) -> dict[str, list[str]]:
        """The signatures attached to each of `manifests` (digests), one listing per shard folder."""
        wanted: dict[str, set[str]] = {}
        for manifest in manifests:
            wanted.setdefault(hex_of(manifest)[:2], set()).add(hex_of(manifest))
        found: dict[str, list[str]] = {}
        for shard, hexes in wanted.items():
            for name in self.backend.list_dir(f"{SIGNATURES_DIR}/{shard}"):
                manifest_hex, _, signature_hex = name.partition(".")
                if manifest_hex in hexes and is_digest(PREFIX + signature_hex):
                    found.setdefault(PREFIX + manifest_hex, []).append(PREFIX + signature_hex)
        return found

    def of(self, manifest: str) -> list[str]:
        """The signatures attached to `manifest`."""
        return self.attached([manifest]).get(manifest, [])

    def read(self, manifest: str, signature: str) -> bytes:
        """The stored bytes (not checked: see `check_signature`)."""
        try:
            return self.backend.read_bytes(signature_path(manifest, signature))
        except FileNotFoundError:
            raise NotFoundError(f"signature {signature} of manifest {manifest} is missing") from None

    def checks(self, manifest: str) -> list[SignatureCheck]:
        """Every signature attached to `manifest`, checked, oldest claim first."""
        found = [check_signature(manifest, digest, self.read(manifest, digest)) for digest in self.of(manifest)]
        return sorted(found, key=lambda check: (check.time or "", check.digest))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(manifest, signature) for every stored signature."""
        for path in self.backend.walk(SIGNATURES_DIR):
            manifest_hex, _, signature_hex = path.rpartition("/")[2].partition(".")
            if is_digest(PREFIX + manifest_hex) and is_digest(PREFIX + signature_hex):
                yield PREFIX + manifest_hex, PREFIX + signature_hex

    def remove(self, manifest: str, signature: str) -> None:
        self.backend.remove(signature_path(manifest, signature))
