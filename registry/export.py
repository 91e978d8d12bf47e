"""Export: a base or adapter bank → a folder `from_pretrained` loads.

Files are written back byte for byte; tensors are streamed from their objects into
safetensors shards (transformers' naming and index format), each object verified as it
is copied. Everything is written into a hidden sibling folder that is renamed into place
only when complete, so an export is never seen half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .banks import Bank, TensorRecord
from .errors import InputError, IntegrityError
from .names import check_relative_path
from .progress import Advance, byte_progress
from .safetensors_format import TensorEntry, encode_header
from .store import Store

DEFAULT_MAX_SHARD_SIZE = "5GB"
DEFAULT_METADATA = {"format": "pt"}


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    out_dir: Path
    bank_type: str
    weight_files: list[str]
    files: int
    bytes: int


def natural_key(name: str) -> list[object]:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def export_bank(
    store: Store,
    ref: str,
    out_dir: str | Path,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    show_progress: bool = False,
) -> ExportResult:
    """Write the bank `ref` names as a Hugging Face model folder (base) or PEFT folder (adapter)."""
    bank = store.bank(ref)
    if bank.type not in ("base", "adapter"):
        raise InputError(f"{ref} is a {bank.type} bank; export writes base and adapter banks (compose the others)")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: already exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.wb-tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        total = sum(r.bytes for r in bank.tensors.values()) + sum(f.bytes for f in bank.files.values())
        with byte_progress(total, f"export {out.name}", show_progress) as advance:
            _write_files(store, bank, staging, advance)
            weight_files = write_weights(store, bank, staging, max_shard_size, advance)
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, bank.type, weight_files, len(bank.files), total)


def _write_files(store: Store, bank: Bank, folder: Path, advance: Advance) -> None:
    for rel, record in bank.files.items():
        target = folder / check_relative_path(rel, f"bank {bank.digest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.objects.read(record.digest))
        advance(record.bytes)


def write_weights(
    store: Store, bank: Bank, folder: Path, max_shard_size: int | str, advance: Advance = lambda _n: None
) -> list[str]:
    """Write the bank's tensors as safetensors into `folder`; return the file names."""
    from huggingface_hub.serialization import split_state_dict_into_shards_factory

    records = {name: bank.tensors[name] for name in sorted(bank.tensors, key=natural_key)}
    metadata = bank.document.get("safetensors_metadata") or DEFAULT_METADATA
    if bank.type == "adapter":
        write_safetensors(store, records, folder / "adapter_model.safetensors", metadata, advance)
        return ["adapter_model.safetensors"]
    split = split_state_dict_into_shards_factory(
        records,
        get_storage_size=lambda record: record.bytes,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    for filename, names in split.filename_to_tensors.items():
        write_safetensors(store, {n: records[n] for n in names}, folder / filename, metadata, advance)
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": bank.parameters, "total_size": sum(r.bytes for r in records.values())},
            "weight_map": split.tensor_to_filename,
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return [*split.filename_to_tensors, "model.safetensors.index.json"]
    return list(split.filename_to_tensors)


def write_safetensors(
    store: Store,
    records: dict[str, TensorRecord],
    path: Path,
    metadata: dict[str, str],
    advance: Advance = lambda _n: None,
) -> None:
    """One safetensors file streamed from tensor objects, each verified on the way.

    Bytes can land before a bad object is detected: `path` must be inside a staging folder
    that is discarded on error (as `export_bank` does)."""
    entries: dict[str, TensorEntry] = {}
    offset = 0
    for name, record in records.items():
        entries[name] = TensorEntry(record.dtype, record.shape, offset, offset + record.bytes)
        offset += record.bytes
    with open(path, "wb", buffering=0) as out, ThreadPoolExecutor(1, "weightbank-copy") as copier:
        out.write(encode_header(entries, metadata))
        for name, record in records.items():
            found = store.objects.copy_tensor_data(record.digest, out.fileno(), copier)
            if (found.dtype, found.shape) != (record.dtype, record.shape):
                raise IntegrityError(
                    f"object {record.digest} holds {found.dtype}{list(found.shape)} but the manifest says "
                    f"{record.dtype}{list(record.shape)} for {name!r}"
                )
            advance(record.bytes)
