"""PRISM banks in the store: a bridge's tile grid and bias as tensor objects, its `grid`
section (geometry, taps, fit report) and its parents, recorded as the next version of a name.

The registry knows nothing of how a bridge is fitted (that is `weightbank.composer.prism`);
it stores raw little-endian bytes, like every other tensor object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .banks import Bank, Parent, TensorRecord, new_bank_manifest
from .errors import InputError
from .manifests import validate_manifest
from .names import check_ref_name
from .objects import Buffer, tensor_object_digest
from .refs import RefEntry
from .store import Store

GRID_TENSOR = "grid"  # [T, tile_rows, tile_cols]
BIAS_TENSOR = "bias"  # [d_B]


@dataclass(frozen=True)
class RawTensor:
    """A tensor as bytes: what the registry stores."""

    dtype: str
    shape: tuple[int, ...]
    data: Buffer


@dataclass(frozen=True)
class RecordedBank:
    entry: RefEntry
    digest: str
    new_objects: int


def prism_bank(store: Store, ref: str) -> Bank:
    """The prism bank a ref names; any other bank type is refused by name."""
    bank = store.bank(ref)
    if bank.type != "prism":
        raise InputError(f"{ref} is a {bank.type} bank, not a prism bank")
    return bank


def record_prism_bank(
    store: Store,
    name: str,
    *,
    grid_tensor: RawTensor,
    bias: RawTensor,
    grid: dict[str, Any],
    parents: list[Parent],
    activity: dict[str, Any],
    action: str,
    message: str = "",
) -> RecordedBank:
    """Store the two tensors and the manifest, then record it as the next version of `name`.
    The manifest is built and schema-validated before anything is written; then objects come
    first, the manifest next, the ref last."""
    check_ref_name(name)
    store.check_type(name, "prism")
    tensors = {GRID_TENSOR: grid_tensor, BIAS_TENSOR: bias}
    records = {
        key: TensorRecord(tensor_object_digest(t.dtype, t.shape, t.data), t.dtype, t.shape, len(t.data))
        for key, t in tensors.items()
    }
    manifest = new_bank_manifest("prism", tensors=records, files={}, parents=parents, activity=activity, grid=grid)
    validate_manifest(manifest, "prism bank manifest")
    created = 0
    with store.backend.batch():
        for key, tensor in tensors.items():
            created += store.objects.put_tensor(
                tensor.dtype, tensor.shape, tensor.data, digest=records[key].digest
            ).created
    digest = store.manifests.put(manifest)
    entry = store.record(name, digest, action=action, message=message)
    return RecordedBank(entry, digest, created)
