"""Remembered digests of safetensors files, so a checkpoint seen before is not read again.

Two keys, one table each:
- a local file by its identity — device, inode, size, mtime and ctime in nanoseconds — the
  way git's index and dvc's state database avoid re-hashing. ctime cannot be set from user
  space, so a rewrite that keeps size and mtime still changes the key;
- a file's contents by their sha256, the content hash the Hub keeps for every LFS file (its
  oid): files read from a source that vouches for their sha256, remembered only once the
  bytes read were checked to hash to it, and the shards a publish uploads. A re-ingest of a
  repo, a fine-tune that shares shards, or a repo published from this store then reads only
  the files whose sha256 is new.

The cache may only ever save work, never change a result, so a remembered row is used only
when everything cheap that could disagree agrees: the file's identity, a fingerprint of the
safetensors header read in this run (names, dtypes, shapes, offsets), a checksum over the row
itself (a damaged row is noticed, not trusted), and — checked by ingest — every remembered
object still in the store with the dtype and shape the header says. Anything else means the
file is read and hashed again. A cache file that is not a readable database is rebuilt.
The cache lives in the store folder (`state/hashes.sqlite`); stores given by URL have none.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import warnings
from pathlib import Path

from .digest import digest_bytes
from .errors import WeightbankWarning
from .safetensors_format import SafetensorsHeader

_TABLE = "safetensors_v2"  # local files: path -> identity, header fingerprint, digests
_CONTENTS = "sha256_v1"  # file contents: sha256 -> header fingerprint, digests


def file_identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def header_fingerprint(header: SafetensorsHeader) -> str:
    """A digest of what a safetensors header says (read from the file in this run)."""
    layout = {name: [e.dtype, list(e.shape), e.begin, e.end] for name, e in header.tensors.items()}
    return digest_bytes(json.dumps([layout, header.metadata, header.data_start], sort_keys=True).encode())


def _row_check(*fields: str) -> str:
    return digest_bytes("\0".join(fields).encode())


def _digests(encoded: str, header: SafetensorsHeader) -> dict[str, str] | None:
    """A row's digests, if they decode and name exactly the header's tensors."""
    try:
        found = json.loads(encoded)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.keys() != header.tensors.keys():
        return None
    return found


class HashCache:
    """tensor name → digest for each remembered file (by local identity, or by sha256)."""

    def __init__(self, database: Path) -> None:
        database.parent.mkdir(parents=True, exist_ok=True)
        self.database = database
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            warnings.warn(f"the hash cache {database} was damaged ({exc}); rebuilt it", WeightbankWarning, stacklevel=2)
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{database}{suffix}").unlink(missing_ok=True)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.database, timeout=60, isolation_level=None)
        try:
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_TABLE} (path TEXT PRIMARY KEY, identity TEXT NOT NULL,"
                " fingerprint TEXT NOT NULL, digests TEXT NOT NULL, checksum TEXT NOT NULL)"
            )
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {_CONTENTS} (sha256 TEXT PRIMARY KEY, fingerprint TEXT NOT NULL,"
                " digests TEXT NOT NULL, checksum TEXT NOT NULL)"
            )
            db.execute(f"SELECT count(*) FROM {_TABLE}").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def lookup(self, path: Path, header: SafetensorsHeader) -> dict[str, str] | None:
        """The remembered digests of `path`, if its row is intact and still describes the file."""
        key = str(path.resolve())
        try:
            row = self._db.execute(
                f"SELECT identity, fingerprint, digests, checksum FROM {_TABLE} WHERE path = ?", (key,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return None
        if row is None or not all(isinstance(value, str) for value in row):
            return None
        identity, fingerprint, digests, checksum = row
        if (
            identity != file_identity(path)
            or fingerprint != header_fingerprint(header)
            or checksum != _row_check(key, identity, fingerprint, digests)
        ):
            return None
        return _digests(digests, header)

    def remember(self, path: Path, identity: str, header: SafetensorsHeader, digests: dict[str, str]) -> None:
        key, fingerprint = str(path.resolve()), header_fingerprint(header)
        encoded = json.dumps(digests, sort_keys=True)
        # The cache only saves work: a failed write costs a re-hash next time.
        with contextlib.suppress(sqlite3.DatabaseError):
            self._db.execute(
                f"INSERT OR REPLACE INTO {_TABLE} VALUES (?, ?, ?, ?, ?)",
                (key, identity, fingerprint, encoded, _row_check(key, identity, fingerprint, encoded)),
            )

    def lookup_sha256(self, sha256: str, header: SafetensorsHeader) -> dict[str, str] | None:
        """The remembered digests of a file whose bytes hash to `sha256`, if its row is intact
        and agrees with the header read in this run."""
        try:
            row = self._db.execute(
                f"SELECT fingerprint, digests, checksum FROM {_CONTENTS} WHERE sha256 = ?", (sha256,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return None
        if row is None or not all(isinstance(value, str) for value in row):
            return None
        fingerprint, digests, checksum = row
        if fingerprint != header_fingerprint(header) or checksum != _row_check(sha256, fingerprint, digests):
            return None
        return _digests(digests, header)

    def remember_sha256(self, sha256: str, header: SafetensorsHeader, digests: dict[str, str]) -> None:
        """Remember the tensors of a file whose bytes are known to hash to `sha256`."""
        fingerprint, encoded = header_fingerprint(header), json.dumps(digests, sort_keys=True)
        with contextlib.suppress(sqlite3.DatabaseError):
            self._db.execute(
                f"INSERT OR REPLACE INTO {_CONTENTS} VALUES (?, ?, ?, ?)",
                (sha256, fingerprint, encoded, _row_check(sha256, fingerprint, encoded)),
            )

    def close(self) -> None:
        self._db.close()
