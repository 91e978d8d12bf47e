"""The safetensors container, read and written at the byte level.

weightbank moves tensors as bytes: ingest copies each tensor's byte range out of a
checkpoint into its own canonical object, export concatenates object payloads into shards.
The `safetensors` package deserialises to framework tensors and does not expose byte
offsets, so the header is parsed (and validated as strictly as safetensors itself does:
known dtype, sizes that match shapes, contiguous in-range offsets) here.

Layout: 8-byte little-endian header length N, N bytes of JSON header (space padded), data.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

from .errors import InputError
from .json_input import parse_json_object
from .names import check_tensor_name

# Byte width of every dtype safetensors can store whole-byte elements of, declared in the order
# of safetensors' own Dtype enum: `save_file` writes tensors by that order, largest first, then
# by name (see `safetensors_order`).
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1,
    "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "C64": 8, "F64": 8, "I64": 8, "U64": 8,
}  # fmt: skip
_DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(DTYPE_SIZES)}
FLOAT_DTYPES = frozenset(d for d in DTYPE_SIZES if d.startswith(("F", "BF", "C")))
# safetensors refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000
CANONICAL_KEY = "tensor"
_ALIGN = 8


@dataclass(frozen=True)
class TensorEntry:
    """One tensor in a safetensors file: its dtype, shape and byte range in the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors by name, free-form metadata, where the data section starts."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] | None
    data_start: int


def read_header(stream: BinaryIO, file_size: int, source: str) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file of `file_size` bytes.

    Raises InputError naming `source` for anything safetensors itself would refuse.
    """
    if file_size < 8:
        raise InputError(
            f"{source}: truncated safetensors file ({file_size} bytes, less than the 8-byte header length)"
        )
    (header_len,) = struct.unpack("<Q", stream.read(8))
    if header_len > MAX_HEADER_BYTES:
        raise InputError(f"{source}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + header_len > file_size:
        raise InputError(f"{source}: header length {header_len} runs past the end of the {file_size}-byte file")
    header = parse_json_object(stream.read(header_len), source, "header", unique_keys=True)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise InputError(f"{source}: __metadata__ must map strings to strings")
    tensors = {name: _parse_entry(name, spec, source) for name, spec in header.items()}
    _check_layout(tensors, file_size - 8 - header_len, source)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, data_start=8 + header_len)


def _parse_entry(name: str, spec: object, source: str) -> TensorEntry:
    check_tensor_name(name, source)
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data_offsets"}:
        raise InputError(f"{source}: tensor {name!r} must have exactly dtype, shape and data_offsets")
    dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise InputError(f"{source}: tensor {name!r} has unknown or unsupported dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise InputError(f"{source}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise InputError(f"{source}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    if end < begin:
        raise InputError(f"{source}: tensor {name!r} has data_offsets that end before they begin {offsets!r}")
    entry = TensorEntry(dtype=dtype, shape=tuple(shape), begin=begin, end=end)
    expected = entry.numel * DTYPE_SIZES[dtype]
    if entry.nbytes != expected:
        raise InputError(
            f"{source}: tensor {name!r} spans {entry.nbytes} bytes but {dtype}{list(shape)} needs {expected}"
        )
    return entry


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(tensors: Mapping[str, TensorEntry], data_len: int, source: str) -> None:
    """Offsets must tile the data section exactly: no overlap, no gap, nothing past the end."""
    position, previous = 0, None
    for name, entry in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if entry.begin < position:
            raise InputError(f"{source}: tensors {previous!r} and {name!r} have overlapping data_offsets")
        if entry.begin > position:
            raise InputError(f"{source}: gap in the data section before tensor {name!r} (offset {entry.begin})")
        position, previous = entry.end, name
    if position > data_len:
        raise InputError(
            f"{source}: data_offsets run to byte {position} but the data section holds {data_len} bytes "
            "(truncated file?)"
        )
    if position < data_len:
        raise InputError(f"{source}: {data_len - position} trailing bytes after the last tensor")


def encode_header(tensors: Mapping[str, TensorEntry], metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length plus the JSON header, padded with spaces to 8-byte alignment."""
    body: dict[str, object] = {}
    if metadata:
        body["__metadata__"] = dict(metadata)
    for name, entry in tensors.items():
        body[name] = {"dtype": entry.dtype, "shape": list(entry.shape), "data_offsets": [entry.begin, entry.end]}
    raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def safetensors_order(name: str, dtype: str) -> tuple[int, str]:
    """Sort key of the order safetensors' `save_file` (and so `save_pretrained`) lays tensors
    out in a file: dtype, later enum members first, then name."""
    return (-_DTYPE_RANK[dtype], name)


def canonical_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """Header of a tensor object: one tensor named `tensor`, no metadata.

    The object's bytes then depend on dtype, shape and data alone, so a tensor is stored once
    whatever checkpoint or name it came from.
    """
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    return encode_header({CANONICAL_KEY: TensorEntry(dtype, tuple(shape), 0, nbytes)})


def read_canonical_entry(stream: BinaryIO, file_size: int, source: str) -> tuple[TensorEntry, int]:
    """Parse a tensor object's header: its single entry and where its data starts."""
    header = read_header(stream, file_size, source)
    entry = header.tensors.get(CANONICAL_KEY)
    if entry is None or len(header.tensors) != 1 or header.metadata:
        raise InputError(f"{source}: not a canonical tensor object")
    return entry, header.data_start
