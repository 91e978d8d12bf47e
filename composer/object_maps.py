"""Tensor objects as the composer reads them: memory-mapped once, verified from that mapping.

A reader verifies what it reads (docs/architecture.md). The composer maps a local tensor
object copy-on-write — as safetensors' `safe_open` does, so a model may later change its
weights in place — and hashes the mapped bytes themselves before the tensor is used: the
kernel maps the file's pages while BLAKE3 reads them (on all cores), so the first forward
pass finds them mapped, and the tensor handed on is backed by the very bytes that were
hashed (hashing the file and then mapping it again would read it twice).

Each object is hashed at most once per process: a later mapping of a file whose identity —
device, inode, size, mtime and ctime — is the one hashed before is trusted. Every write to a
file, and every rename over it, changes its ctime, which user space cannot set; what this
does not see is a change below the filesystem (a failing disk) between two reads by the
same process, after the bytes were verified once.

The executor does this ahead of use, in the order it will need the objects, on a helper
thread (`lookahead.Lookahead`).
"""

from __future__ import annotations

import io
import os
from typing import cast

import torch
from blake3 import blake3

from weightbank.registry.digest import format_digest
from weightbank.registry.errors import IntegrityError
from weightbank.registry.safetensors_format import read_canonical_entry

from .dtypes import to_torch

_Identity = tuple[str, int, int, int, int, int]
_hashed: set[_Identity] = set()  # objects hashed intact by this process (see the module docstring)


def _identity(digest: str, path: str) -> _Identity:
    info = os.stat(path)
    return (digest, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def map_verified(path: str, digest: str) -> torch.Tensor:
    """The tensor of the local object file `path`, memory-mapped copy-on-write, after its bytes
    hashed to `digest` (once per process)."""
    before = _identity(digest, path)
    mapped = cast(torch.UntypedStorage, torch.UntypedStorage.from_file(path, shared=False, nbytes=before[3]))
    whole = torch.empty(0, dtype=torch.uint8).set_(mapped)
    after = _identity(digest, path)
    if before != after or after not in _hashed:
        actual = format_digest(blake3(max_threads=blake3.AUTO).update(whole.numpy().data))
        if actual != digest:
            raise IntegrityError(f"object {digest} is corrupt: its bytes hash to {actual}")
        if before == after:
            _hashed.add(after)
    header = bytes(whole[: 8 + int.from_bytes(bytes(whole[:8].numpy()), "little")].numpy())
    entry, start = read_canonical_entry(io.BytesIO(header), whole.numel(), f"object {digest}")
    return whole[start : start + entry.nbytes].view(to_torch(entry.dtype)).view(entry.shape)
