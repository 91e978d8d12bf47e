"""Export: a base or adapter bank → a folder `from_pretrained` loads.

Files are written back byte for byte; tensors are streamed from their objects into
safetensors shards (transformers' naming and index format), each object verified as it
is copied. Everything is written into a hidden sibling folder that is renamed into place
only when complete, so an export is never seen half-written. With a signing key, the folder
also gets a `model.sig` in the OpenSSF model-signing format (see `folder_signing`), written
before the rename; under a trust policy, a bank that is not signed by a trusted key is
refused before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .banks import Bank, FileRecord, TensorRecord
from .checkpoints import (
    ADAPTER_WEIGHTS,
    DEFAULT_METADATA,
    in_file_order,
    layout,
    plan_shards,
    recorded_layout,
    staged_folder,
    write_index,
)
from .errors import InputError, IntegrityError
from .folder_signing import SIGNATURE_FILE, check_folder_key, sign_folder
from .keys import load_signing_key
from .names import check_relative_path
from .naming import with_article
from .progress import Advance, byte_progress
from .safetensors_format import encode_header
from .signing import require_signed
from .store import Store
from .trust import TrustPolicy


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    out_dir: Path
    bank_type: str
    weight_files: list[str]
    files: int
    bytes: int
    signed_by: str | None = None  # the key id of model.sig's signer, with --sign


def export_bank(
    store: Store,
    ref: str,
    out_dir: str | Path,
    *,
    max_shard_size: int | str | None = None,
    show_progress: bool = False,
    sign_key: Path | None = None,
    policy: TrustPolicy | None = None,
) -> ExportResult:
    """Write the bank `ref` names as a Hugging Face model folder (base) or PEFT folder (adapter).

    Without `max_shard_size`, a bank ingested from a checkpoint is written in that checkpoint's
    own files (same names, same tensors in the same order: the same bytes); any other bank as
    save_pretrained would write it (its default shard size, safetensors' layout). `sign_key`
    (an ECDSA P-256 PEM): also sign the folder into `model.sig`; `policy`: refuse a bank it
    does not accept."""
    bank = exportable_bank(store, ref, policy)
    key = load_signing_key(sign_key) if sign_key is not None else None
    if key is not None:
        check_folder_key(key)
        if SIGNATURE_FILE in bank.files:
            raise InputError(f"{ref} holds a file named {SIGNATURE_FILE}; a signed export writes its own")
    out = Path(out_dir)
    total = sum(r.bytes for r in bank.tensors.values()) + sum(f.bytes for f in bank.files.values())
    with staged_folder(out) as staging, byte_progress(total, f"export {out.name}", show_progress) as advance:
        write_files(store, bank.files, staging, advance)
        weight_files = write_weights(store, bank, staging, max_shard_size, advance)
        if key is not None:
            sign_folder(staging, key)
    return ExportResult(out, bank.type, weight_files, len(bank.files), total, key.public.key_id if key else None)


def exportable_bank(store: Store, ref: str, policy: TrustPolicy | None = None) -> Bank:
    """The bank `ref` names, if it is one export writes (a base or an adapter) and `policy`
    (if any) accepts its signatures."""
    bank = store.bank(ref)
    if bank.type not in ("base", "adapter"):
        raise InputError(
            f"{ref} is {with_article(bank.type)} bank; export writes base and adapter banks (compose the others)"
        )
    if policy is not None:
        require_signed(store, [bank.digest], policy, f"export of {ref}")
    return bank


def write_files(store: Store, files: Mapping[str, FileRecord], folder: Path, advance: Advance) -> None:
    """Write file objects under `folder` at their relative paths, byte for byte."""
    for rel, record in files.items():
        target = folder / check_relative_path(rel, "manifest")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(store.objects.read(record.digest))
        advance(record.bytes)


def write_weights(
    store: Store, bank: Bank, folder: Path, max_shard_size: int | str | None = None, advance: Advance = lambda _n: None
) -> list[str]:
    """Write the bank's tensors as safetensors into `folder`; return the file names."""
    records, metadata = bank.tensors, shard_metadata(bank)
    shards = weight_shards(bank, max_shard_size)
    for filename, names in shards.items():
        write_safetensors(store, {n: records[n] for n in names}, folder / filename, metadata, advance)
    index = write_index(folder, shards, sum(r.bytes for r in records.values()), bank.parameters)
    return [*shards, *([index] if index else [])]


def weight_shards(bank: Bank, max_shard_size: int | str | None = None) -> dict[str, list[str]]:
    """Weight file name → its tensors in file order: without `max_shard_size`, the source
    checkpoint's own files where the bank came from one; else as save_pretrained shards."""
    records = bank.tensors
    recorded = recorded_layout(bank.document.get("metadata"), records) if max_shard_size is None else None
    if recorded is not None:
        return recorded
    if bank.type == "adapter":
        return {ADAPTER_WEIGHTS: in_file_order({name: record.dtype for name, record in records.items()})}
    return plan_shards({name: (r.dtype, r.bytes) for name, r in records.items()}, max_shard_size)


def shard_metadata(bank: Bank) -> dict[str, str]:
    """The `__metadata__` of the bank's weight files: the source's, else `{"format": "pt"}`."""
    return bank.document.get("safetensors_metadata") or DEFAULT_METADATA


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
    entries = layout({name: (r.dtype, r.shape, r.bytes) for name, r in records.items()})
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
