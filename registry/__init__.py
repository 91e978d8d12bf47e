"""The weight-bank registry: content-addressed objects, MES v1 manifests, versioned refs.

Start with `Registry`; the modules below it each hold one concept
(`objects`, `manifests`, `refs`, `provenance`, `ingest` and its `sources`, `export`, `publish`,
`audit`, `gc`, the `remotes` package for push and pull and for folders on the Hub and S3, and
`keys`, `signatures`, `trust`, `signing` and `folder_signing` for signed banks).
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
    SignatureError,
    WeightbankError,
)
from .export import ExportResult
from .gc import GcReport
from .ingest import IngestResult
from .provenance import Lineage
from .publish import PublishResult
from .refs import RefEntry
from .registry import Registry, RollbackResult
from .remotes import Remote, TransferResult
from .scaffold_add import SeedSpec
from .signing import Signer, SignResult
from .store import Store
from .trust import TrustedKey, TrustPolicy

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
    "PublishResult",
    "RefEntry",
    "Registry",
    "Remote",
    "RemoteError",
    "RollbackResult",
    "SchemaError",
    "SeedSpec",
    "SignResult",
    "SignatureError",
    "Signer",
    "Store",
    "TensorRecord",
    "TransferResult",
    "TrustPolicy",
    "TrustedKey",
    "WeightbankError",
]
