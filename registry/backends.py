"""Where a store's bytes live: a local folder, or any fsspec filesystem.

A backend offers the few primitives the store needs, over paths relative to its root:
atomic writes (readers never see a partial file), create-only writes (the compare-and-swap
under every ref update), reads, listing and removal.

The local backend uses `os` directly because fsspec's local filesystem offers neither
fsync nor an atomic create-only rename; everything else goes through fsspec.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from .file_range import FileRange, write_all
from .temporaries import TEMP_PREFIX, is_stale, temp_name

if TYPE_CHECKING:
    import fsspec

Chunk = bytes | bytearray | memoryview | FileRange
Chunks = Iterable[Chunk]
TEMP_DIR = "tmp"  # a local store's temporary files, all in one folder
__all__ = [
    "TEMP_DIR", "TEMP_PREFIX", "Backend", "Chunk", "Chunks", "FsspecBackend", "LocalBackend", "open_backend",
    "url_to_filesystem",
]  # fmt: skip


class Backend(Protocol):
    """The storage primitives a store is built on. Paths are relative POSIX paths.

    `write_atomic` is `stage` (bytes written under a temporary name in `folder`) followed
    by `publish` (made durable, then given their name); the two halves exist so a caller
    can write bytes while it is still computing the name (the digest) they will get.

    `freshen` and `remove_unless_fresh` are the two halves of the protocol between writers
    and gc (see `gc`): a writer that reuses a file freshens it (False: it is gone, write it
    again); gc removes a file only if it is still not fresh once nobody can freshen it any more.
    """

    url: str
    freshens: bool  # whether `freshen` really marks files (local folders) or only checks them

    def read_bytes(self, path: str) -> bytes: ...
    def open_read(self, path: str) -> BinaryIO: ...
    def local_path(self, path: str) -> str | None: ...
    def size(self, path: str) -> int: ...
    def exists(self, path: str) -> bool: ...
    def write_atomic(self, path: str, chunks: Chunks) -> None: ...
    def stage(self, chunks: Chunks, folder: str) -> Any: ...
    def publish(self, staged: Any, path: str) -> None: ...
    def discard(self, staged: Any) -> None: ...
    def create_exclusive(self, path: str, data: bytes) -> None: ...
    def list_dir(self, path: str) -> list[str]: ...
    def walk(self, path: str) -> Iterator[str]: ...
    def remove(self, path: str) -> None: ...
    def modified(self, path: str) -> float: ...
    def freshen(self, path: str) -> bool: ...
    def remove_unless_fresh(self, path: str, cutoff: float) -> bool: ...
    def batch(self) -> AbstractContextManager[None]: ...


def in_memory(chunks: Chunks) -> list[bytes | bytearray | memoryview]:
    """The chunks as buffers: file ranges are read now."""
    return [chunk.read() if isinstance(chunk, FileRange) else chunk for chunk in chunks]


def _temp_name(path: str) -> str:
    head, _, _tail = path.rpartition("/")
    return f"{head}/{temp_name()}" if head else temp_name()


class LocalBackend:
    """A store in a local folder: fsynced temp files in `tmp/`, atomic renames, O_EXCL-style
    links. Temporaries a killed writer left behind are removed by the next writer."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        # While batching: final path -> the temporary file that will be published under it.
        self._pending: dict[str, Path] | None = None
        self._pending_lock = threading.Lock()
        self._cleaned = False
        self.freshens = True

    def _full(self, path: str) -> Path:
        return self.root / path

    def _readable(self, path: str) -> Path:
        """Where `path`'s bytes are: inside a batch, a file published in it is still under its temporary name."""
        pending = self._pending
        staged = pending.get(path) if pending is not None else None
        return staged if staged is not None else self._full(path)

    def read_bytes(self, path: str) -> bytes:
        return self._readable(path).read_bytes()

    def open_read(self, path: str) -> BinaryIO:
        return open(self._readable(path), "rb")

    def local_path(self, path: str) -> str | None:
        return str(self._readable(path))

    def size(self, path: str) -> int:
        return self._readable(path).stat().st_size

    def exists(self, path: str) -> bool:
        return (self._pending is not None and path in self._pending) or self._full(path).is_file()

    def stage(self, chunks: Chunks, folder: str) -> Path:
        """Write `chunks` to a new temporary file (in `tmp/`, whatever `folder`; not synced)."""
        directory = self._full(TEMP_DIR)
        if not self._cleaned:
            directory.mkdir(parents=True, exist_ok=True)
            self.remove_stale_temporaries()
            self._cleaned = True
        temp = directory / temp_name()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            for chunk in chunks:
                if isinstance(chunk, FileRange):
                    chunk.copy_into(fd)
                else:
                    write_all(fd, chunk)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return temp

    def publish(self, staged: Path, path: str) -> None:
        """fsync, rename to `path`, fsync the folder; inside `batch()`, deferred to its end."""
        final = self._full(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._pending_lock:
            if self._pending is not None:
                self._pending[path] = staged
                return
        self._fsync(staged)
        os.replace(staged, final)
        self._fsync(final.parent)

    def discard(self, staged: Path) -> None:
        staged.unlink(missing_ok=True)

    def write_atomic(self, path: str, chunks: Chunks) -> None:
        self.publish(self.stage(chunks, path.rpartition("/")[0]), path)

    @staticmethod
    def _fsync(path: Path) -> None:
        """fsync a file, or a folder (making the renames in it durable)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group many atomic writes: inside the block each is written under its temporary
        name only (reads find it there); on a clean exit all are made durable with one
        filesystem sync (Linux `syncfs`; elsewhere one fsync each) and then renamed into
        place. A name is never published before its bytes are on disk; if the block fails,
        nothing is published and the temporary files are removed."""
        if self._pending is not None:
            yield
            return
        self._pending = {}
        pending = self._pending
        try:
            yield
        except BaseException:
            with self._pending_lock:
                self._pending = None
            for temp in pending.values():
                temp.unlink(missing_ok=True)
            raise
        with self._pending_lock:
            self._pending = None
        self._sync_all(pending.values())
        for path, temp in pending.items():
            os.replace(temp, self._full(path))
        self._sync_all(self._full(path).parent for path in pending)

    def _sync_all(self, paths: Iterable[Path]) -> None:
        """Make files (or folders, after renames) durable: one syncfs, or fsync each."""
        if _syncfs(self.root):
            return
        for path in set(paths):
            self._fsync(path)

    def create_exclusive(self, path: str, data: bytes) -> None:
        temp = self.stage([data], path.rpartition("/")[0])
        final = self._full(path)
        try:
            self._fsync(temp)
            final.parent.mkdir(parents=True, exist_ok=True)
            # link() fails with EEXIST if the name exists: atomic create-only publication.
            os.link(temp, final)
        finally:
            temp.unlink()
        self._fsync(final.parent)

    def freshen(self, path: str) -> bool:
        """Mark a file as just used (its mtime), so a running gc keeps it; False if it is gone."""
        if self._pending is not None and path in self._pending:
            return True
        try:
            os.utime(self._full(path))
        except FileNotFoundError:
            return False
        return True

    def remove_unless_fresh(self, path: str, cutoff: float) -> bool:
        """Remove `path` unless it was modified (freshened) after `cutoff`. The file is first
        moved out of its name, so from then on no writer can freshen it (they find it gone and
        write it again); only then is its age read. True if removed."""
        final = self._full(path)
        trash = self._full(TEMP_DIR) / temp_name()
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            return False
        if trash.stat().st_mtime <= cutoff:
            trash.unlink()
            return True
        # A writer freshened it just before: put it back (unless it already wrote it again).
        with contextlib.suppress(FileExistsError):
            os.link(trash, final)
        trash.unlink()
        return False

    def remove_stale_temporaries(self) -> list[str]:
        """Remove temporaries whose writer is gone (see `temporaries`); their store paths."""
        return [path for path in self.stale_temporaries() if self._remove_quietly(path)]

    def stale_temporaries(self) -> list[str]:
        folder = self._full(TEMP_DIR)
        now = time.time()
        found = []
        for entry in os.scandir(folder) if folder.is_dir() else ():
            try:
                if is_stale(entry.name, entry.stat().st_mtime, now):
                    found.append(f"{TEMP_DIR}/{entry.name}")
            except FileNotFoundError:
                continue
        return found

    def _remove_quietly(self, path: str) -> bool:
        try:
            self._full(path).unlink()
        except FileNotFoundError:
            return False
        return True

    def list_dir(self, path: str) -> list[str]:
        folder = self._full(path)
        if not folder.is_dir():
            return []
        return sorted(name for name in os.listdir(folder) if not name.startswith(TEMP_PREFIX))

    def walk(self, path: str) -> Iterator[str]:
        top = self._full(path)
        for folder, _dirs, files in os.walk(top):
            rel = Path(folder).relative_to(self.root).as_posix()
            for name in sorted(files):
                yield f"{rel}/{name}"

    def remove(self, path: str) -> None:
        """Remove a file, and its folder if that is left empty (a purged ref, a drained shard)."""
        target = self._full(path)
        target.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            target.parent.rmdir()

    def modified(self, path: str) -> float:
        return self._full(path).stat().st_mtime


class FsspecBackend:
    """A store on any fsspec filesystem (memory://, s3://, …).

    Object stores that publish a PUT only once it is complete (S3) are written in place;
    others are written under a temporary name and moved.
    """

    _ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs"})

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        self.freshens = False
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        self._atomic_put = bool(protocols & self._ATOMIC_PUT_PROTOCOLS)

    def _full(self, path: str) -> str:
        return f"{self.root}/{path}"

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self._full(path))

    def open_read(self, path: str) -> BinaryIO:
        return self.fs.open(self._full(path), "rb")

    def local_path(self, path: str) -> str | None:
        return None

    def size(self, path: str) -> int:
        return int(self.fs.size(self._full(path)))

    def exists(self, path: str) -> bool:
        # Asked afresh: another process may have written since (fsspec caches listings).
        self.fs.invalidate_cache(self._full(path))
        return bool(self.fs.isfile(self._full(path)))

    def freshen(self, path: str) -> bool:
        """Object stores cannot refresh a file's time cheaply: only whether it is there."""
        return self.exists(path)

    def remove_unless_fresh(self, path: str, cutoff: float) -> bool:
        try:
            if self.modified(path) > cutoff:
                return False
            self.remove(path)
        except FileNotFoundError:
            return False
        return True

    def stage(self, chunks: Chunks, folder: str) -> list[bytes | bytearray | memoryview]:
        """Nothing is written until `publish` knows the name; file ranges are read now."""
        return in_memory(chunks)

    def publish(self, staged: list[bytes | bytearray | memoryview], path: str) -> None:
        target = self._full(path) if self._atomic_put else self._full(_temp_name(path))
        with self.fs.open(target, "wb") as out:
            for chunk in staged:
                out.write(chunk)
        if not self._atomic_put:
            self.fs.mv(target, self._full(path))

    def discard(self, staged: list[bytes | bytearray | memoryview]) -> None:
        staged.clear()

    def write_atomic(self, path: str, chunks: Chunks) -> None:
        self.publish(self.stage(chunks, path.rpartition("/")[0]), path)

    def create_exclusive(self, path: str, data: bytes) -> None:
        # Mode "xb" is create-only: a conditional PUT (If-None-Match) on S3.
        with self.fs.open(self._full(path), "xb") as out:
            out.write(data)

    def list_dir(self, path: str) -> list[str]:
        # Listings are always fresh: another process may have written since (fsspec caches them).
        self.fs.invalidate_cache(self._full(path))
        try:
            entries = self.fs.ls(self._full(path), detail=False)
        except FileNotFoundError:
            return []
        names = (entry.rstrip("/").rpartition("/")[2] for entry in entries)
        return sorted(name for name in names if not name.startswith(TEMP_PREFIX))

    def walk(self, path: str) -> Iterator[str]:
        prefix = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        self.fs.invalidate_cache(self._full(path))
        try:
            found = self.fs.find(self._full(path))
        except FileNotFoundError:
            return
        for full in sorted(found):
            yield full[len(prefix) :] if full.startswith(prefix) else full

    def remove(self, path: str) -> None:
        self.fs.rm_file(self._full(path))

    def modified(self, path: str) -> float:
        info = self.fs.info(self._full(path))
        for key in ("mtime", "created", "LastModified", "last_modified"):
            value = info.get(key)
            if value is not None:
                return value.timestamp() if hasattr(value, "timestamp") else float(value)
        return 0.0

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def _syncfs(folder: Path) -> bool:
    """Flush every dirty page of the filesystem holding `folder` (Linux syncfs(2)).

    Python's os module has no syncfs; one call replaces an fsync per object, which on ext4
    forces a journal commit each time. Returns False where syncfs is unavailable."""
    libc = _libc()
    if libc is None or not hasattr(libc, "syncfs"):
        return False
    fd = os.open(folder, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), f"syncfs failed: {os.strerror(ctypes.get_errno())}", str(folder))
    finally:
        os.close(fd)
    return True


@cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def url_to_filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of a URL and the path in it, listings never cached (object stores'
    filesystems remember listings for their whole life: another process may have written since)."""
    import fsspec  # only stores and folders given by URL need it

    protocol = url.partition("://")[0]
    options = {"use_listings_cache": False} if protocol in FsspecBackend._ATOMIC_PUT_PROTOCOLS else {}
    return fsspec.core.url_to_fs(url, **options)


def open_backend(url: str | Path) -> Backend:
    """The backend for a store URL or path: local folders get `LocalBackend`."""
    text = str(url)
    if not _URL.match(text):
        return LocalBackend(text)
    from fsspec.implementations.local import LocalFileSystem

    fs, root = url_to_filesystem(text)
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(root)
    return FsspecBackend(fs, root, text)
