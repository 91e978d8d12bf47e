"""Signing keys: PEM files in, signatures out, and the key ids that name public keys.

Keys are ECDSA P-256 (what OpenSSF model-signing's key signer uses, signatures over SHA-256,
DER-encoded) or Ed25519; every primitive comes from `cryptography`. A key id is
`sha256:<hex>` of the public key's SubjectPublicKeyInfo PEM as `cryptography` writes it —
the value model-signing records as the key hint in a `model.sig` — so the same key has the
same id in a bank signature, the trust list and an exported folder's signature, however the
PEM file it came from was formatted.

A password-protected private key is opened with the password in `$WEIGHTBANK_KEY_PASSWORD`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .errors import InputError

ECDSA_P256 = "ecdsa-p256-sha256"
ED25519 = "ed25519"
ENV_PASSWORD = "WEIGHTBANK_KEY_PASSWORD"
KEY_ID_PREFIX = "sha256:"
_KINDS = "ECDSA P-256 or Ed25519"

VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class PublicKey:
    """A public key that verifies weightbank signatures: its PEM, its id and its algorithm."""

    pem: str
    key_id: str
    algorithm: str
    key: VerifyingKey

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether `signature` is this key's signature over `data`."""
        try:
            if isinstance(self.key, ec.EllipticCurvePublicKey):
                self.key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            else:
                self.key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SigningKey:
    """A private key and its public half."""

    path: Path
    key: PrivateKey
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self.key.sign(data)


def short_key_id(key_id: str) -> str:
    """A short form for humans: `sha256:1a2b3c4d5e6f`."""
    return key_id[: len(KEY_ID_PREFIX) + 12]


def _public(key: VerifyingKey) -> PublicKey:
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    algorithm = ECDSA_P256 if isinstance(key, ec.EllipticCurvePublicKey) else ED25519
    return PublicKey(pem.decode("ascii"), KEY_ID_PREFIX + hashlib.sha256(pem).hexdigest(), algorithm, key)


def _describe(key: object) -> str:
    """What kind of key this is, for a refusal: `an RSA key (2048 bits)`, `an ECDSA secp384r1 key`."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return f"an ECDSA {key.curve.name} key"
    kind = type(key).__name__.replace("PrivateKey", "").replace("PublicKey", "")
    bits = getattr(key, "key_size", None)
    return f"{'an' if kind[:1] in 'AEIOUR' else 'a'} {kind} key" + (f" ({bits} bits)" if bits else "")


def _supported(key: object) -> bool:
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return isinstance(key.curve, ec.SECP256R1)
    return isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey))


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not a key file") from None


def load_signing_key(path: Path) -> SigningKey:
    """The private key in the PEM file `path` (InputError: missing, not a private key, a
    public key, a kind we do not sign with, encrypted without `$WEIGHTBANK_KEY_PASSWORD`)."""
    data = _read(path)
    password = os.environ.get(ENV_PASSWORD)
    try:
        key = _private_key(data, password.encode() if password else None)
    except TypeError:
        raise InputError(f"{path}: the private key is encrypted; set {ENV_PASSWORD} to its password") from None
    except (ValueError, UnsupportedAlgorithm):
        if _is_public(data):
            raise InputError(f"{path} is a public key; signing needs the private key") from None
        wrong_password = password is not None and b"ENCRYPTED" in data
        raise InputError(
            f"{path}: {f'wrong password in ${ENV_PASSWORD}' if wrong_password else 'not a PEM private key'}"
        ) from None
    if not _supported(key):
        raise InputError(f"{path} holds {_describe(key)}; weightbank signs with {_KINDS} keys")
    assert isinstance(key, (ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey))
    return SigningKey(Path(path), key, _public(key.public_key()))


def _private_key(data: bytes, password: bytes | None) -> object:
    """The PEM private key; a password set for another, encrypted key is not needed here."""
    try:
        return serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise
        return serialization.load_pem_private_key(data, None)


def _is_public(data: bytes) -> bool:
    try:
        serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        return False
    return True


def load_public_key(path: Path) -> PublicKey:
    """The public key in the PEM file `path` (InputError if it is missing, not a PEM public
    key — a private key is refused: trust its public half — or of another kind)."""
    return public_key_from_pem(_read(path), str(path))


def public_key_from_pem(data: bytes | str, where: str) -> PublicKey:
    """A public key from PEM bytes (a key file, the trust list, a signature document)."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        if b"PRIVATE KEY" in raw:
            raise InputError(
                f"{where} is a private key; give its public key (openssl pkey -in KEY.pem -pubout -out PUB.pem)"
            ) from None
        raise InputError(f"{where}: not a PEM public key") from None
    if not _supported(key):
        raise InputError(f"{where} holds {_describe(key)}; weightbank verifies {_KINDS} keys")
    assert isinstance(key, (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey))
    return _public(key)
