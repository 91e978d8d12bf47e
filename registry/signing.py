"""Signing banks in a store: `sign` a manifest, list who signed what, hold banks to a trust policy.

Signing reads only the manifest (its digest names every object), so it takes milliseconds
whatever the bank's size. The signature documents and where they live are `signatures`;
keys are `keys`; whose signatures count is `trust`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import trust
from .errors import NotFoundError
from .keys import load_signing_key
from .manifests import manifest_path
from .naming import names_by_target
from .signatures import VALID, SignatureCheck, make_signature
from .store import Store


@dataclass(frozen=True)
class SignResult:
    """What `sign` did: `created` is False when this key had already signed the manifest."""

    ref: str
    manifest: str
    key_id: str
    signature: str
    created: bool
    trusted_as: str | None


@dataclass(frozen=True)
class Signer:
    """One signature attached to a manifest, checked, with the name this store trusts its key under."""

    check: SignatureCheck
    trusted_as: str | None

    def to_json(self) -> dict[str, Any]:
        return {**self.check.to_json(), "trusted_as": self.trusted_as}


def sign(store: Store, ref: str, key_file: Path) -> SignResult:
    """Sign the manifest `ref` names with the private key in `key_file` (PEM)."""
    key = load_signing_key(key_file)  # a bad key fails before anything is read or written
    digest = store.resolve(ref)
    store.manifests.get(digest)  # verified: a damaged manifest is never signed
    trusted_as = _trusted_names(store).get(key.public.key_id)
    for check in store.signatures.checks(digest):
        if check.key_id == key.public.key_id and check.status == VALID:
            return SignResult(ref, digest, key.public.key_id, check.digest, False, trusted_as)
    if not store.backend.freshen(manifest_path(digest)):  # a gc running now keeps what we sign (see `gc`)
        raise NotFoundError(f"manifest {digest} went missing (a concurrent gc?): run the command again")
    signature, created = store.signatures.add(digest, make_signature(digest, key))
    return SignResult(ref, digest, key.public.key_id, signature, created, trusted_as)


def _trusted_names(store: Store) -> dict[str, str]:
    return {trusted.key.key_id: trusted.name for trusted in trust.load(store).values()}


def signers(store: Store, digest: str) -> list[Signer]:
    """Every signature attached to manifest `digest`, checked, oldest first."""
    names = _trusted_names(store)
    return [Signer(check, names.get(check.key_id or "")) for check in store.signatures.checks(digest)]


def require_signed(store: Store, roots: Iterable[str], policy: trust.TrustPolicy, what: str) -> None:
    """SignatureError naming every manifest in the closure of `roots` that `policy` refuses."""
    trust.require(trust.refusals_in_store(store, roots, policy, names_by_target(store)), what)
