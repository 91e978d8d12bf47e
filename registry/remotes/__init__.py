"""Remotes: push and pull banks to another store (a folder, an S3 bucket, a Hub repo).

A remote is a store with the same layout as a local one (`urls.open_remote`); the modules:
`config` (the remotes a store knows), `closure` (what a set of refs needs), `history` (ref
histories: what a push publishes, how a pull merges), `transfer` (push and pull), `hub` (a
Hub repo as a backend, commits with parent_commit) and `lazy` (objects fetched on demand).
"""

from .config import Remote
from .transfer import DEFAULT_JOBS, TransferResult

__all__ = ["DEFAULT_JOBS", "Remote", "TransferResult"]
