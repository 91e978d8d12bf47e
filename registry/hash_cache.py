"""Remembered digests of local safetensors files, so an unchanged checkpoint is not re-read.

Keyed by the file's identity — device, inode, size, mtime and ctime in nanoseconds — the
way git's index and dvc's state database avoid re-hashing. ctime cannot be set from user
space, so a rewrite that keeps size and mtime still changes the key. A hit is used only if
every remembered object is still in the store; otherwise the file is read and hashed again.
The cache lives in the store folder (`state/hashes.sqlite`); stores given by URL have none.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path


def file_identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class HashCache:
    """tensor name → digest for each remembered file."""

    def __init__(self, database: Path) -> None:
        database.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(database, timeout=60, isolation_level=None)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS safetensors"
            " (path TEXT PRIMARY KEY, identity TEXT NOT NULL, digests TEXT NOT NULL)"
        )

    def lookup(self, path: Path) -> dict[str, str] | None:
        row = self._db.execute(
            "SELECT identity, digests FROM safetensors WHERE path = ?", (str(path.resolve()),)
        ).fetchone()
        if row is None or row[0] != file_identity(path):
            return None
        return json.loads(row[1])

    def remember(self, path: Path, identity: str, digests: dict[str, str]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO safetensors VALUES (?, ?, ?)",
            (str(path.resolve()), identity, json.dumps(digests, sort_keys=True)),
        )

    def close(self) -> None:
        self._db.close()
