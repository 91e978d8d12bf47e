"""The weight-bank registry: content-addressed objects, MES v1 manifests, versioned refs.

Start with `Registry`; the modules below it each hold one concept
(`objects`, `manifests`, `refs`, `provenance`, `ingest`, `export`, `audit`, `gc`, and the
`remotes` package for push and pull).
"""

from .audit import CheckReport, Problem
from .banks import Bank, FileRecord, Parent, TensorRecord
from .errors import (
    ConflictError,
    InputError,
    IntegrityError,
    NotFoundError,
    RemoteError,
    SchemaError,
    WeightbankError,
)
from .export import ExportResult
from .gc import GcReport
from .ingest import IngestResult
from .provenance import Lineage
from .refs import RefEntry
from .registry import Registry, RollbackResult
from .remotes import Remote, TransferResult
from .store import Store

__all__ = [
    "Bank",
    "CheckReport",
    "ConflictError",
    "ExportResult",
    "FileRecord",
    "GcReport",
    "IngestResult",
    "InputError",
    "IntegrityError",
    "Lineage",
    "NotFoundError",
    "Parent",
    "Problem",
    "RefEntry",
    "Registry",
    "Remote",
    "RemoteError",
    "RollbackResult",
    "SchemaError",
    "Store",
    "TensorRecord",
    "TransferResult",
    "WeightbankError",
]
