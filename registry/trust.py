"""Trust policy: whose signatures a store accepts, and the verdict on a bank and its closure.

The trust list is the store's `trust.json`, small JSON replaced atomically by every change:
`{"keys": {"alice": {"key_id": "sha256:…", "public_key": "-----BEGIN PUBLIC KEY-----…",
"added": "2026-…Z", "agent": "…"}}}`. It is configuration of this store, never of a remote: a
transfer reads what a remote holds, not what it trusts. A policy is the trust list plus any
keys given for one command (`--trusted-key PUB.pem`).

Under a policy (`--require-signed`) a manifest is accepted only if one of its signatures is
valid and by a trusted key; a bank is accepted only if its manifest and every bank in its
closure are (parents, transitively, and the banks a composition names). A composition that
is only a parent — the recipe of a composed bank — is covered by that bank's signature.
A refusal names the bank, its digest and why: unsigned, unknown key, bad signature, or
signed manifest ≠ this manifest (a signature moved onto another manifest).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .digest import is_digest, short
from .errors import InputError, NotFoundError, SignatureError, WeightbankError
from .keys import PublicKey, load_public_key, public_key_from_pem, short_key_id
from .names import check_ref_name
from .provenance import current_agent, parents_of, utc_now
from .settings import read_settings, write_settings
from .signatures import BAD, OTHER_MANIFEST, VALID, SignatureCheck
from .store import Store

TRUST_FILE = "trust.json"


@dataclass(frozen=True)
class TrustedKey:
    """A key in the trust list, under the name it was added with."""

    name: str
    key: PublicKey
    added: str
    agent: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key_id": self.key.key_id, "algorithm": self.key.algorithm,
                "added": self.added, "agent": self.agent}  # fmt: skip


def load(store: Store) -> dict[str, TrustedKey]:
    """The store's trust list, by name (InputError if `trust.json` is damaged)."""
    where = f"{store.url}/{TRUST_FILE}"
    document = read_settings(store, TRUST_FILE, "the trust list")
    if document is None:
        return {}
    keys: dict[str, TrustedKey] = {}
    try:
        for name, entry in document["keys"].items():
            key = public_key_from_pem(entry["public_key"], f"{where}: key {name!r}")
            if key.key_id != entry["key_id"]:
                raise InputError(f"{where}: the key id of {name!r} does not match its public key (edited?)")
            keys[name] = TrustedKey(name, key, entry["added"], entry["agent"])
    except (KeyError, TypeError, AttributeError):
        raise InputError(
            f"{where}: expected {{'keys': {{NAME: {{'key_id', 'public_key', 'added', 'agent'}}}}}}"
        ) from None
    return keys


def _save(store: Store, keys: dict[str, TrustedKey]) -> None:
    document = {
        "keys": {
            name: {"key_id": k.key.key_id, "public_key": k.key.pem, "added": k.added, "agent": k.agent}
            for name, k in sorted(keys.items())
        }
    }
    write_settings(store, TRUST_FILE, document)


def add(store: Store, name: str, public_key: Path) -> TrustedKey:
    """Trust the public key in the PEM file `public_key` under `name`."""
    check_ref_name(name, "trusted key")
    key = load_public_key(public_key)
    keys = load(store)
    if name in keys:
        raise InputError(f"a key named {name!r} is already trusted ({short_key_id(keys[name].key.key_id)}); "
                         f"remove it first (weightbank trust rm {name})")  # fmt: skip
    for other in keys.values():
        if other.key.key_id == key.key_id:
            raise InputError(f"{public_key}: this key is already trusted as {other.name!r}")
    keys[name] = TrustedKey(name, key, utc_now(), current_agent())
    _save(store, keys)
    return keys[name]


def remove(store: Store, name: str) -> TrustedKey:
    """Stop trusting the key named `name`."""
    keys = load(store)
    removed = keys.pop(name, None)
    if removed is None:
        raise NotFoundError(f"no trusted key named {name!r} (weightbank trust ls lists them)")
    _save(store, keys)
    return removed


@dataclass(frozen=True)
class TrustPolicy:
    """The keys whose valid signatures are accepted, by key id: the name each is trusted under
    (its trust-list name, or the file it was given in) and the key itself."""

    names: dict[str, str]
    public_keys: dict[str, PublicKey]

    def verdict(self, checks: list[SignatureCheck]) -> str | None:
        """None if a manifest with these signatures is accepted, else why not."""
        trusted = [check for check in checks if check.key_id in self.names]
        if any(check.status == VALID for check in trusted):
            return None
        moved = [check for check in trusted if check.status == OTHER_MANIFEST]
        if moved:
            signs = moved[0].signs or ""
            return f"signed manifest ≠ this manifest (the signature by {self._who(moved[0])} signs {short(signs)})"
        bad = [check for check in checks if check.status == BAD]
        if bad:
            return f"bad signature ({self._who(bad[0])}: {bad[0].problem})"
        if checks:
            keys = sorted({short_key_id(check.key_id or "") for check in checks})
            return f"unknown key (signed only by {', '.join(keys)}, which this store does not trust)"
        return "unsigned"

    def _who(self, check: SignatureCheck) -> str:
        if check.key_id is None:
            return f"signature {short(check.digest)}"
        return self.names.get(check.key_id) or short_key_id(check.key_id)


def policy(store: Store, trusted_keys: Iterable[Path] = ()) -> TrustPolicy:
    """The store's trust list plus `trusted_keys` (PEM files); InputError if that is no key at all."""
    named = {trusted.key.key_id: (trusted.name, trusted.key) for trusted in load(store).values()}
    for path in trusted_keys:
        key = load_public_key(path)
        named.setdefault(key.key_id, (Path(path).name, key))
    if not named:
        raise InputError(
            "--require-signed: this store trusts no key — add one (weightbank trust add NAME PUB.pem) "
            "or give --trusted-key PUB.pem"
        )
    return TrustPolicy({i: name for i, (name, _) in named.items()}, {i: key for i, (_, key) in named.items()})


@dataclass(frozen=True)
class Refusal:
    """A manifest the policy does not accept, and why."""

    digest: str
    label: str  # its ref (`tiny@v1`), or "" when no ref names it
    reason: str

    def __str__(self) -> str:
        return (
            f"{self.label} ({short(self.digest)}): {self.reason}"
            if self.label
            else f"{short(self.digest)}: {self.reason}"
        )


def _named_banks(value: Any) -> list[str]:
    """The bank digests a stored composition names (its resolved `base` and `bank` fields)."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k in ("base", "bank") and isinstance(v, str) and is_digest(v)]
        return found + [d for k, v in value.items() if k != "metadata" for d in _named_banks(v)]
    if isinstance(value, list):
        return [d for item in value for d in _named_banks(item)]
    return []


def refusals(
    roots: Iterable[str],
    policy: TrustPolicy,
    document: Callable[[str], dict[str, Any]],
    checks: Callable[[str], list[SignatureCheck]],
    label: Callable[[str], str],
) -> list[Refusal]:
    """What `policy` refuses in the closure of `roots`: each root and every bank reachable
    from them. `document` and `checks` read a manifest and its checked signatures (from a
    store, or from what a pull is about to bring in); `label` names a digest by its refs
    ("" if none: it is then named by how it was reached, e.g. "base of lora@v1")."""
    pending = [(digest, True, "") for digest in roots]
    seen: set[str] = set()
    found: list[Refusal] = []
    while pending:
        digest, root, via = pending.pop()
        if digest in seen:
            continue
        name = label(digest) or via
        try:
            manifest = document(digest)
        except WeightbankError as exc:
            seen.add(digest)
            found.append(Refusal(digest, name, f"cannot be checked ({exc})"))
            continue
        if manifest["kind"] == "composition" and not root:
            continue  # a composed bank's recipe: covered by that bank's signature
        seen.add(digest)
        reason = policy.verdict(checks(digest))
        if reason is not None:
            found.append(Refusal(digest, name, reason))
        of = f" of {name}" if name else ""
        if manifest["kind"] == "bank":
            pending += [(p["digest"], False, f"{p['role']}{of}") for p in parents_of(manifest)]
        else:
            pending += [(bank, False, f"input{of}") for bank in _named_banks(manifest)]
    return sorted(found, key=lambda refusal: (refusal.label, refusal.digest))


def refusals_in_store(
    store: Store, roots: Iterable[str], policy: TrustPolicy, names: dict[str, list[str]]
) -> list[Refusal]:
    """`refusals` for manifests in `store`; `names`: the refs of each manifest (digest → labels)."""
    return refusals(
        roots, policy, store.manifests.get, store.signatures.checks, lambda digest: ", ".join(names.get(digest, []))
    )


def require(found: list[Refusal], what: str) -> None:
    """Raise SignatureError naming every refusal (one line), if there are any."""
    if found:
        count = f"{len(found)} manifests are" if len(found) > 1 else "1 manifest is"
        raise SignatureError(f"{what} refused: {count} not signed by a trusted key — " + "; ".join(map(str, found)))
