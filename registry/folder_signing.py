"""Model folders signed in the OpenSSF model-signing format: `model.sig` on export, checked on ingest.

`model.sig` is a Sigstore bundle holding a DSSE envelope over an in-toto statement that lists
the SHA-256 of every file in the folder; the `model-signing` package (the `signing` extra)
writes and verifies it — nothing of the format or its cryptography is done here. Signing
uses its elliptic-key signer (so ECDSA P-256 keys only: it takes no Ed25519), ignoring
`model.sig` itself; anyone can then check the folder with

    python -m model_signing verify key --signature OUT/model.sig --public_key PUB.pem OUT

which refuses it after any byte of any file changes, or a file is added or removed. Signing
hashes every byte once more (SHA-256), which is the cost of `export --sign`.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, SignatureError
from .keys import ECDSA_P256, ENV_PASSWORD, PublicKey, SigningKey, short_key_id
from .trust import TrustPolicy

SIGNATURE_FILE = "model.sig"
FORMAT = "openssf-model-signing"
_INSTALL = "pip install 'weightbank[signing]'"
# How model-signing words the differences between a folder and its signature (quotes may be escaped).
_DIFFERENCES = (
    ("changed", r"Hash mismatch for \\?'(.+?)\\?':"),
    ("added", r"Extra files found in model \\?'.*?\\?': ([^'\"\]]+)"),
    ("removed", r"Missing files in model \\?'.*?\\?': ([^'\"\]]+)"),
)


def _library() -> Any:
    try:
        import model_signing  # the `signing` extra; imports in about a second, so only when used
    except ImportError:
        raise InputError(f"OpenSSF model signing needs the model-signing package: {_INSTALL}") from None
    return model_signing


def check_folder_key(key: SigningKey) -> None:
    """InputError unless model-signing can sign with `key` (and is installed)."""
    if key.public.algorithm != ECDSA_P256:
        raise InputError(
            f"{key.path} is an Ed25519 key; model.sig is made by OpenSSF model-signing's key signer, which takes "
            "ECDSA P-256 keys (Ed25519 signs banks in the store only)"
        )
    _library()


def sign_folder(folder: Path, key: SigningKey) -> None:
    """Write `folder/model.sig`, signing every other file in `folder` with `key`."""
    check_folder_key(key)
    model_signing = _library()
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])
    signer = model_signing.signing.Config().use_elliptic_key_signer(
        private_key=key.path, password=os.environ.get(ENV_PASSWORD)
    )
    signer.set_hashing_config(hashing).sign(folder, folder / SIGNATURE_FILE)


@dataclass(frozen=True)
class FolderSigner:
    """Who signed a verified folder: the key's id and the name it is trusted under."""

    key_id: str
    trusted_as: str

    def to_provenance(self) -> dict[str, str]:
        return {"format": FORMAT, "key_id": self.key_id, "trusted_as": self.trusted_as}


def verify_folder(folder: Path, policy: TrustPolicy) -> FolderSigner:
    """Check `folder/model.sig` with model-signing against every ECDSA key `policy` trusts;
    SignatureError (one line: which file changed, was added or removed; or whose key) if none
    accepts the folder."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise SignatureError(f"{folder}: no {SIGNATURE_FILE}; --require-signed takes folders signed with OpenSSF "
                             "model-signing (weightbank export REF OUT --sign KEY.pem makes them)")  # fmt: skip
    model_signing = _library()
    candidates = [key for key in policy.public_keys.values() if key.algorithm == ECDSA_P256]
    with tempfile.TemporaryDirectory(prefix="weightbank-keys-") as scratch:
        for key in candidates:
            pem = Path(scratch) / f"{key.key_id.partition(':')[2]}.pem"
            pem.write_text(key.pem)
            verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=pem)
            try:
                verifier.verify(folder, signature)
            except Exception as exc:  # the library raises ValueError, InvalidSignature, parse errors
                if _other_key(exc):
                    continue
                raise SignatureError(_refusal(folder, key, policy, exc)) from None
            return FolderSigner(key.key_id, policy.names[key.key_id])
    trusted = ", ".join(short_key_id(key.key_id) for key in candidates) or "no ECDSA P-256 key"
    raise SignatureError(f"{signature}: unknown key — not signed by a trusted key (trusted: {trusted})")


def _other_key(exc: Exception) -> bool:
    """Whether model-signing refused because the bundle names another key (its key hint),
    or — for bundles without a hint — the signature does not verify with this key."""
    return str(exc).startswith("Key mismatch") or type(exc).__name__ == "InvalidSignature"


def _refusal(folder: Path, key: PublicKey, policy: TrustPolicy, exc: Exception) -> str:
    """model-signing's verdict in one line: which files changed, were added or removed."""
    message = str(exc)  # e.g. Signature mismatch: ["Hash mismatch for 'config.json': Expected …", …]
    details = [
        f"{kind}: {', '.join(found)}" for kind, pattern in _DIFFERENCES if (found := re.findall(pattern, message))
    ]
    who = f"{policy.names[key.key_id]} ({short_key_id(key.key_id)})"
    what = "; ".join(details) or message.splitlines()[0][:300]
    return f"{folder}: bad signature — the folder does not match its {SIGNATURE_FILE} (signed by {who}): {what}"
