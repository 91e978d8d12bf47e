"""Error classes. Every message is one line a user can act on."""

from __future__ import annotations


class WeightbankError(Exception):
    """Base class of every error weightbank raises on purpose."""


class InputError(WeightbankError):
    """Something the user gave us (a folder, a file, a name, a flag) is not acceptable."""


class SchemaError(WeightbankError):
    """A manifest or ref entry does not validate against its MES v1 schema."""


class NotFoundError(WeightbankError):
    """A ref, version, manifest or object does not exist in the store."""


class IntegrityError(WeightbankError):
    """Stored bytes do not match the digest that names them."""


class ConflictError(WeightbankError):
    """A compare-and-swap update lost the race: someone else wrote that version first."""


class SignatureError(WeightbankError):
    """A bank is refused by the trust policy: unsigned, signed by an unknown key, or badly signed."""


class RemoteError(WeightbankError):
    """A push or pull failed on the way: the remote refused a request, or I/O failed."""


class WeightbankWarning(UserWarning):
    """Something worth telling the user that did not stop the work (the CLI prints one line)."""
