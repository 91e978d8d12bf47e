"""Reading a remote file by byte ranges: a header from its start, then the data section in
parts with several requests in flight, handed on in file order as each part arrives.

`Fetch(start, end)` returns exactly the bytes [start, end) of one file (a Hub `resolve` GET
with a Range header, an s3fs `cat_file`, …). Nothing is written to local disk: parts live in
memory until the tensors they hold have been hashed and stored, so memory is bounded by the
parts in flight (IN_FLIGHT × PART_BYTES, and as many waiting for the file's sha256) plus one
tensor that spans parts.
"""

from __future__ import annotations

import hashlib
import io
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from .errors import IntegrityError, RemoteError

if TYPE_CHECKING:
    from .safetensors_format import SafetensorsHeader
    from .sources import TensorData

Fetch = Callable[[int, int], bytes]
PART_BYTES = 8 << 20
IN_FLIGHT = 8


class RangeStream(io.RawIOBase):
    """A remote file read sequentially from its start, one range request per read (no read-ahead:
    a header read reads the header's bytes and nothing else). Keeps what it read in `consumed`."""

    def __init__(self, fetch: Fetch, size: int) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = size
        self._position = 0
        self.consumed = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        end = min(self._size, self._position + len(buffer))
        if end <= self._position:
            return 0
        data = self._fetch(self._position, end)
        buffer[: len(data)] = data
        self._position += len(data)
        self.consumed += data
        return len(data)


def checked_fetch(fetch: Fetch, where: str) -> Fetch:
    """`fetch`, refusing an answer of another length than asked for (a server that ignored the range)."""

    def exact(start: int, end: int) -> bytes:
        data = fetch(start, end)
        if len(data) != end - start:
            raise RemoteError(f"{where}: asked for bytes {start}–{end - 1}, got {len(data)} bytes")
        return data

    return exact


def read_parts(fetch: Fetch, start: int, end: int, pool: Executor) -> Iterator[bytes]:
    """The bytes [start, end) as consecutive parts of at most PART_BYTES, with up to IN_FLIGHT
    requests on `pool` at once. If the reader stops early, requests not yet sent are cancelled."""
    bounds = iter([(offset, min(offset + PART_BYTES, end)) for offset in range(start, end, PART_BYTES)])
    pending: deque[Future[bytes]] = deque()

    def send_next() -> None:
        bound = next(bounds, None)
        if bound is not None:
            pending.append(pool.submit(fetch, *bound))

    for _ in range(IN_FLIGHT):
        send_next()
    try:
        while pending:
            data = pending.popleft().result()
            send_next()
            yield data
    finally:
        for future in pending:
            future.cancel()


def read_tensors(
    fetch: Fetch, header: SafetensorsHeader, head: bytes, size: int, sha256: str | None, where: str, pool: Executor
) -> TensorData:
    """Each tensor's bytes in file order, from the data section read by `read_parts`. With a
    `sha256`, the whole file — `head` (the header bytes as read) and every byte after it — is
    hashed as it arrives (on a thread of its own) and checked once the last tensor is read:
    IntegrityError if it differs."""
    parts = read_parts(fetch, header.data_start, size, pool)
    if sha256 is None:
        yield from _slices(header, parts, where)
        return
    hasher = hashlib.sha256(head)
    with ThreadPoolExecutor(1, "weightbank-sha256") as hashing:
        hashed: deque[Future[None]] = deque()

        def in_order() -> Iterator[bytes]:
            for part in parts:
                hashed.append(hashing.submit(hasher.update, part))
                while len(hashed) > IN_FLIGHT:  # parts wait for the hash no longer than for the network
                    hashed.popleft().result()
                yield part

        yield from _slices(header, in_order(), where)
        for pending in hashed:
            pending.result()
    if hasher.hexdigest() != sha256:
        raise IntegrityError(
            f"{where}: its bytes hash to sha256 {hasher.hexdigest()[:12]}…, not to {sha256[:12]}… as the source "
            "says; nothing was stored"
        )


def _slices(header: SafetensorsHeader, parts: Iterator[bytes], where: str) -> TensorData:
    """Cut consecutive parts of the data section into tensors: views of a part, or — for a tensor
    that spans parts — one buffer the parts are copied into as they come (each part is let go of
    once copied, so memory holds the tensor once)."""
    current = memoryview(b"")
    for name, entry in sorted(header.tensors.items(), key=lambda item: item[1].begin):
        if len(current) >= entry.nbytes:
            data: bytearray | memoryview = current[: entry.nbytes]
            current = current[entry.nbytes :]
        else:
            data = bytearray(entry.nbytes)
            data[: len(current)] = current
            have = len(current)
            while have < entry.nbytes:
                part = memoryview(next(parts, b""))
                if not part:
                    raise RemoteError(f"{where}: the file ended before tensor {name!r}")
                take = min(len(part), entry.nbytes - have)
                data[have : have + take] = part[:take]
                have += take
                current = part[take:]
        yield name, entry, data
    if len(current) or next(parts, None) is not None:
        raise RemoteError(f"{where}: more bytes than its header describes")
