"""The object store: immutable blobs named by the BLAKE3 digest of their bytes.

Two kinds of object share one namespace (`objects/<2 hex>/<64 hex>`):
- tensor objects, canonical single-tensor safetensors files (see `safetensors_format`);
- file objects, the raw bytes of tokenizer files, configs and the like.

Writers hash first and write only what is missing, through the backend's atomic write, so a
digest never names a partial blob. Readers verify the digest of everything they return.

A store pulled with `--lazy` lacks objects on purpose: the store gives its ObjectStore a
`fetch` function, and a read of a missing object calls it to bring the object in (verified,
see `add_verified`) before going on. Callers never see the difference.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from .backends import Backend, Chunk
from .digest import PREFIX, digest_bytes, digest_file, format_digest, hex_of, is_digest, stream_hasher
from .errors import IntegrityError, NotFoundError
from .file_range import FileRange, write_all
from .safetensors_format import TensorEntry, canonical_header, read_canonical_entry
from .temporaries import TEMP_PREFIX

Buffer = bytes | bytearray | memoryview
OBJECTS_DIR = "objects"
# Brings a missing object into the store (from a remote it was lazily pulled from); False if it cannot.
Fetch = Callable[[str], bool]
T = TypeVar("T")


def _check(digest: str, actual: str) -> None:
    if actual != digest:
        raise IntegrityError(f"object {digest} is corrupt: its bytes hash to {actual}")


def tensor_object_digest(dtype: str, shape: tuple[int, ...], data: Buffer | FileRange) -> str:
    """The digest of the canonical tensor object that holds these raw bytes."""
    header = canonical_header(dtype, shape)
    if isinstance(data, FileRange):
        with data.view() as view:
            return digest_bytes(header, view)
    return digest_bytes(header, data)


def object_path(digest: str) -> str:
    """Store path of an object: sharded by the first two hex digits."""
    hex_digest = hex_of(digest)
    return f"{OBJECTS_DIR}/{hex_digest[:2]}/{hex_digest}"


@dataclass(frozen=True)
class PutResult:
    """What a write did: the digest, the object's size, and whether it was new to the store."""

    digest: str
    size: int
    created: bool


class ObjectStore:
    """Content-addressed blobs on a backend."""

    def __init__(self, backend: Backend, fetch: Fetch | None = None) -> None:
        self.backend = backend
        self.fetch = fetch

    def has(self, digest: str) -> bool:
        """Whether the object is here (never fetches)."""
        return self.backend.exists(object_path(digest))

    def reuse(self, digest: str) -> bool:
        """Whether the object is here, marking it as used so that a concurrent gc keeps it
        (see `gc`); False means it must be written (again)."""
        return self.backend.freshen(object_path(digest))

    def size(self, digest: str) -> int:
        return self._on_backend(digest, self.backend.size)

    def put(self, data: Buffer) -> PutResult:
        """Store a file object (hashed first; written only when missing)."""
        digest = digest_bytes(data)
        if self.reuse(digest):
            return PutResult(digest, len(data), created=False)
        self.backend.write_atomic(object_path(digest), [data])
        return PutResult(digest, len(data), created=True)

    def put_tensor(
        self,
        dtype: str,
        shape: tuple[int, ...],
        data: Buffer | FileRange,
        copier: Executor | None = None,
        digest: str | None = None,
    ) -> PutResult:
        """Store a tensor's raw little-endian bytes (in memory, or a range of a local file)
        as a canonical tensor object. `digest`: the caller's `tensor_object_digest` of these
        same bytes, when it has already computed it (they are not hashed again).

        With a `copier` thread, the bytes are copied to a temporary file while they are
        hashed (the name is only known after), and the copy is dropped if the store
        already has the object; without one, hashing comes first and only missing
        objects are written.
        """
        header = canonical_header(dtype, shape)
        parts: list[Chunk] = [header, data]
        size = len(header) + len(data)
        staged = copier.submit(self.backend.stage, parts, OBJECTS_DIR) if copier is not None else None
        digest = digest or tensor_object_digest(dtype, shape, data)
        if self.reuse(digest):
            if staged is not None:
                self.backend.discard(staged.result())
            return PutResult(digest, size, created=False)
        path = object_path(digest)
        if staged is None:
            self.backend.write_atomic(path, parts)
        else:
            self.backend.publish(staged.result(), path)
        return PutResult(digest, size, created=True)

    def add_verified(self, digest: str, chunks: Iterable[Buffer], source: str) -> int:
        """Store an object whose digest is known, from a stream of its bytes (a download from
        `source`): the bytes are staged and hashed as they pass, and published only if they
        hash to `digest`; otherwise nothing is kept and IntegrityError names the object.
        Returns the object's size."""
        hasher = stream_hasher()
        size = 0

        def hashed() -> Iterator[Buffer]:
            nonlocal size
            for chunk in chunks:
                hasher.update(chunk)
                size += len(chunk)
                yield chunk

        staged = self.backend.stage(hashed(), OBJECTS_DIR)
        actual = format_digest(hasher)
        if actual != digest:
            self.backend.discard(staged)
            raise IntegrityError(f"object {digest} from {source} is corrupt: its bytes hash to {actual}; not stored")
        self.backend.publish(staged, object_path(digest))
        return size

    def _missing(self, digest: str) -> NotFoundError:
        return NotFoundError(f"object {digest} is missing from the store at {self.backend.url}")

    def _fetch(self, digest: str) -> None:
        if self.fetch is None or not self.fetch(digest):
            raise self._missing(digest)

    def _on_backend(self, digest: str, operation: Callable[[str], T]) -> T:
        """`operation(path of the object)`; a missing object is fetched first where the store can."""
        path = object_path(digest)
        try:
            return operation(path)
        except FileNotFoundError:
            self._fetch(digest)
        try:
            return operation(path)
        except FileNotFoundError:
            raise self._missing(digest) from None

    def read(self, digest: str) -> bytes:
        """The object's bytes, verified against its digest."""
        data = self._on_backend(digest, self.backend.read_bytes)
        _check(digest, digest_bytes(data))
        return data

    def verify(self, digest: str) -> None:
        """Re-hash a stored object; raise IntegrityError/NotFoundError if it is not intact."""
        local = self.local_path(digest)
        if local is None:
            self.read(digest)
            return
        try:
            _check(digest, digest_file(local))
        except FileNotFoundError:
            raise self._missing(digest) from None

    def local_path(self, digest: str) -> str | None:
        """Path of the object on local disk (for memory-mapping), or None on remote stores.
        A missing object is fetched first where the store can."""
        path = self.backend.local_path(object_path(digest))
        if path is not None and self.fetch is not None and not os.path.exists(path):
            self._fetch(digest)
            path = self.backend.local_path(object_path(digest))  # inside a batch: its temporary name
        return path

    def tensor_entry(self, digest: str) -> TensorEntry:
        """dtype and shape of a tensor object, read from its header (not verified)."""
        with self.open(digest) as stream:
            entry, _ = read_canonical_entry(stream, self.size(digest), f"object {digest}")
        return entry

    def copy_tensor_data(self, digest: str, out_fd: int, copier: Executor | None = None) -> TensorEntry:
        """Append a tensor object's data section to the open file `out_fd`, verifying the
        whole object against its digest.

        Local objects are hashed from a memory map and copied by the kernel; with a `copier`
        thread the copy runs while the hash is computed, so bytes may reach `out_fd` before
        IntegrityError is raised: write into a temporary file and drop it on error.
        """
        local = self.local_path(digest)
        if local is None:
            data = self.read(digest)
            entry, data_start = read_canonical_entry(io.BytesIO(data), len(data), f"object {digest}")
            write_all(out_fd, memoryview(data)[data_start:])
            return entry
        with self.open(digest) as stream:
            size = os.fstat(stream.fileno()).st_size
            entry, data_start = read_canonical_entry(stream, size, f"object {digest}")
            payload = FileRange(stream.fileno(), data_start, entry.nbytes)
            copied = copier.submit(payload.copy_into, out_fd) if copier is not None else None
            with FileRange(stream.fileno(), 0, size).view() as whole:
                actual = digest_bytes(whole)
            if copied is not None:
                copied.result()
            _check(digest, actual)
            if copied is None:
                payload.copy_into(out_fd)
        return entry

    def open(self, digest: str) -> BinaryIO:
        """A stream of the object's bytes (not verified: the reader hashes what it reads)."""
        return self._on_backend(digest, self.backend.open_read)

    def __iter__(self) -> Iterator[str]:
        """Digests of every object in the store."""
        for path in self.backend.walk(OBJECTS_DIR):
            name = path.rpartition("/")[2]
            if not name.startswith(TEMP_PREFIX) and is_digest(PREFIX + name):
                yield PREFIX + name

    def remove(self, digest: str) -> None:
        self.backend.remove(object_path(digest))
