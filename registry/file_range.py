"""A byte range of an open local file, moved without passing through Python when possible.

Ingest and export copy tensor payloads between files. Reading them into Python and writing
them out again costs two memory copies; here the kernel copies (`copy_file_range`) and the
hasher reads a pre-faulted memory map (`MAP_POPULATE`), so each byte is copied once, as
`cp` does, and hashed in place.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_FALLBACK_CHUNK = 16 << 20


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """os.write until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass(frozen=True)
class FileRange:
    """`length` bytes at `offset` of the open file descriptor `fd`."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length

    @contextmanager
    def view(self) -> Iterator[memoryview]:
        """The bytes as a read-only memoryview of a memory map (resident only inside the block)."""
        if self.length == 0:
            yield memoryview(b"")
            return
        aligned = self.offset - self.offset % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(
            self.fd,
            self.offset - aligned + self.length,
            flags=mmap.MAP_SHARED | _POPULATE,
            prot=mmap.PROT_READ,
            offset=aligned,
        )
        try:
            with memoryview(mapping) as whole, whole[self.offset - aligned :] as data:
                yield data
        finally:
            mapping.close()

    def copy_into(self, out_fd: int) -> None:
        """Append the bytes to `out_fd` at its current position."""
        done = 0
        try:
            while done < self.length:
                count = os.copy_file_range(self.fd, out_fd, self.length - done, self.offset + done)
                if count == 0:
                    raise EOFError(f"file ended {self.length - done} bytes early")
                done += count
        except OSError:  # no copy_file_range between these files (EXDEV, EINVAL…): copy by hand
            while done < self.length:
                chunk = os.pread(self.fd, min(_FALLBACK_CHUNK, self.length - done), self.offset + done)
                if not chunk:
                    raise EOFError(f"file ended {self.length - done} bytes early") from None
                write_all(out_fd, chunk)
                done += len(chunk)

    def read(self) -> bytes:
        """The bytes, in memory (for stores that are not local files)."""
        with self.view() as data:
            return bytes(data)
