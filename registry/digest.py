"""BLAKE3 digests: the names of every object and manifest in a store.

A digest is written `blake3:<64 lowercase hex>`; that string is what manifests, refs and
the CLI carry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from blake3 import blake3

from .errors import InputError

PREFIX = "blake3:"
_HEX = re.compile(r"[0-9a-f]{64}")
# Below this size a thread pool costs more than it saves.
_THREADS_FROM_BYTES = 1 << 20


def new_hasher(expected_bytes: int = 0) -> blake3:
    """A BLAKE3 hasher, multithreaded when the input is large enough to gain from it."""
    return blake3(max_threads=blake3.AUTO if expected_bytes >= _THREADS_FROM_BYTES else 1)


def format_digest(hasher: blake3) -> str:
    """The `blake3:<hex>` string of a finished hasher."""
    return PREFIX + hasher.hexdigest()


def digest_bytes(*parts: bytes | bytearray | memoryview) -> str:
    """Digest of the concatenation of `parts`."""
    hasher = new_hasher(sum(len(p) for p in parts))
    for part in parts:
        hasher.update(part)
    return format_digest(hasher)


def stream_hasher() -> blake3:
    """A hasher for a stream of unknown length (multithreaded for large chunks)."""
    return new_hasher(_THREADS_FROM_BYTES)


def digest_chunks(chunks: Iterable[bytes]) -> str:
    """Digest of a stream of chunks."""
    hasher = stream_hasher()
    for chunk in chunks:
        hasher.update(chunk)
    return format_digest(hasher)


def digest_file(path: str | Path) -> str:
    """Digest of a local file, memory-mapped and hashed on all cores."""
    return format_digest(blake3(max_threads=blake3.AUTO).update_mmap(path))


def is_digest(text: str) -> bool:
    """Whether `text` is a well-formed `blake3:<hex>` digest."""
    return text.startswith(PREFIX) and _HEX.fullmatch(text[len(PREFIX) :]) is not None


def hex_of(digest: str) -> str:
    """The hex part of a digest, checking its form."""
    if not is_digest(digest):
        raise InputError(f"not a digest: {digest!r} (expected blake3:<64 hex digits>)")
    return digest[len(PREFIX) :]


def short(digest: str) -> str:
    """A short form for humans: `blake3:1a2b3c4d5e6f`."""
    return digest[: len(PREFIX) + 12]
