"""Bank manifests: building them and reading them through typed views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .safetensors_format import FLOAT_DTYPES

BANK_TYPES = ("base", "expansion", "adapter", "scaffold", "prism")


@dataclass(frozen=True)
class TensorRecord:
    """A tensor as a manifest records it."""

    digest: str
    dtype: str
    shape: tuple[int, ...]
    bytes: int

    def to_document(self) -> dict[str, Any]:
        return {"digest": self.digest, "dtype": self.dtype, "shape": list(self.shape), "bytes": self.bytes}


@dataclass(frozen=True)
class FileRecord:
    """A file as a manifest records it."""

    digest: str
    bytes: int

    def to_document(self) -> dict[str, Any]:
        return {"digest": self.digest, "bytes": self.bytes}


@dataclass(frozen=True)
class Parent:
    digest: str
    role: str


def count_parameters(tensors: dict[str, TensorRecord]) -> int:
    """Elements in floating-point tensors (integer buffers such as position ids are not parameters)."""
    total = 0
    for record in tensors.values():
        if record.dtype in FLOAT_DTYPES:
            numel = 1
            for dim in record.shape:
                numel *= dim
            total += numel
    return total


def new_bank_manifest(
    bank_type: str,
    *,
    tensors: dict[str, TensorRecord],
    files: dict[str, FileRecord],
    parents: list[Parent],
    activity: dict[str, Any],
    **sections: Any,
) -> dict[str, Any]:
    """A bank manifest document. `sections` are the type's own fields (config, peft_config,
    recipe, fold, grid, safetensors_metadata, metadata); None values are left out."""
    document: dict[str, Any] = {
        "mes_version": "1",
        "kind": "bank",
        "type": bank_type,
        "tensors": {name: record.to_document() for name, record in tensors.items()},
        "files": {path: record.to_document() for path, record in files.items()},
        "parameters": count_parameters(tensors),
        "provenance": {
            "parents": [{"digest": p.digest, "role": p.role} for p in parents],
            "activity": activity,
        },
    }
    document.update({key: value for key, value in sections.items() if value is not None})
    return document


def content_of(document: dict[str, Any]) -> dict[str, Any]:
    """A manifest without its activity record: what two ingests of the same input share."""
    content = {key: value for key, value in document.items() if key != "provenance"}
    content["parents"] = document.get("provenance", {}).get("parents", [])
    return content


class Bank:
    """Read-only typed view of a bank manifest."""

    def __init__(self, digest: str, document: dict[str, Any]) -> None:
        self.digest = digest
        self.document = document

    @property
    def type(self) -> str:
        return self.document["type"]

    @property
    def tensors(self) -> dict[str, TensorRecord]:
        return {
            name: TensorRecord(t["digest"], t["dtype"], tuple(t["shape"]), t["bytes"])
            for name, t in self.document["tensors"].items()
        }

    @property
    def files(self) -> dict[str, FileRecord]:
        return {path: FileRecord(f["digest"], f["bytes"]) for path, f in self.document["files"].items()}

    @property
    def config(self) -> dict[str, Any] | None:
        return self.document.get("config")

    @property
    def peft_config(self) -> dict[str, Any] | None:
        return self.document.get("peft_config")

    @property
    def parents(self) -> list[Parent]:
        return [Parent(p["digest"], p["role"]) for p in self.document["provenance"]["parents"]]

    @property
    def activity(self) -> dict[str, Any]:
        return self.document["provenance"]["activity"]

    @property
    def parameters(self) -> int:
        return self.document["parameters"]

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data (what the tensors hold, without file headers)."""
        return sum(t["bytes"] for t in self.document["tensors"].values())

    @property
    def file_bytes(self) -> int:
        """Bytes of the other files (config, tokenizer, …)."""
        return sum(f["bytes"] for f in self.document["files"].values())

    def object_digests(self) -> set[str]:
        """Every object the bank's tensors and files name."""
        return {t["digest"] for t in self.document["tensors"].values()} | {
            f["digest"] for f in self.document["files"].values()
        }
