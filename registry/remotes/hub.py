"""A Hugging Face Hub repo as a store backend: the store's own layout, one repo file per object.

Thin over huggingface_hub:
- Reads: `HfApi.list_repo_tree` (listings), `HfApi.get_paths_info` (existence, sizes) and
  streamed downloads of `resolve` URLs through huggingface_hub's retrying HTTP helper. We do
  not use HfFileSystem: before opening a file it lists the parent folder to tell files from
  folders, and it caches listings; we need neither.
- Writes are commits. Inside `batch()`, each file is pre-uploaded as soon as it is published
  (`HfApi.preupload_lfs_files`: LFS or Xet, huggingface_hub's choice) and the batch ends with
  commits of at most COMMIT_FILES files each (the Hub recommends < 100 per commit); outside a
  batch, every write is a commit.
- Compare-and-swap: `create_exclusive` paths are committed with `parent_commit`, the head at
  which they were seen absent; if anything was committed since, the Hub answers 412 and we
  re-read the head and check again (FileExistsError once the path exists with other bytes).
  After a 429, a 5xx or a timeout the commit may have landed: the head is re-read and whatever
  is already there with the same bytes is dropped before the next attempt.

Object paths are sharded (`objects/ab/<hex>`, 256 folders), which keeps every folder under the
Hub's 10,000-entries limit up to about 2.5 million objects.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_stream_backoff
from huggingface_hub.utils.sha import git_hash

from ..backends import TEMP_PREFIX, Chunks, in_memory
from ..errors import NotFoundError, RemoteError

COMMIT_FILES = 100
REFS_PREFIX = "refs/"
PATHS_PER_REQUEST = 100
ATTEMPTS = 6
FIRST_WAIT_SECONDS = 0.5
Operation = CommitOperationAdd | CommitOperationDelete


def hub_api() -> HfApi:
    """An HfApi on `HF_ENDPOINT` as it is now (huggingface_hub reads it once, when first imported)."""
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


class HubBackend:
    """The store in one Hub repo (`repo_type` "model" or "dataset"), on its main branch."""

    def __init__(self, repo_id: str, repo_type: str = "model", api: HfApi | None = None) -> None:
        self.api = api or hub_api()
        self.repo_id = repo_id
        self.repo_type = repo_type
        self.revision = "main"
        self.url = f"hf://datasets/{repo_id}" if repo_type == "dataset" else f"hf://{repo_id}"
        self.freshens = False
        self._lock = threading.Lock()
        # While batching: the files to commit at the end, and which of them are create-only.
        self._pending: list[CommitOperationAdd] | None = None
        self._create_only: set[str] = set()

    # -- reads --------------------------------------------------------------------------

    def _infos(self, paths: Sequence[str], revision: str | None = None, expand: bool = False) -> dict[str, RepoFile]:
        """The files among `paths` that exist (at `revision`, default the branch head)."""
        found: dict[str, RepoFile] = {}
        with self._errors():
            for start in range(0, len(paths), PATHS_PER_REQUEST):
                infos = self.api.get_paths_info(
                    self.repo_id, list(paths[start : start + PATHS_PER_REQUEST]), expand=expand,
                    revision=revision or self.revision, repo_type=self.repo_type,
                )  # fmt: skip
                found.update((info.path, info) for info in infos if isinstance(info, RepoFile))
        return found

    def _info(self, path: str, expand: bool = False) -> RepoFile:
        info = self._infos([path], expand=expand).get(path)
        if info is None:
            raise FileNotFoundError(f"{self.url}/{path}")
        return info

    def exists(self, path: str) -> bool:
        return bool(self._infos([path]))

    def size(self, path: str) -> int:
        return self._info(path).size

    def modified(self, path: str) -> float:
        commit = self._info(path, expand=True).last_commit
        return commit.date.timestamp() if commit is not None and commit.date is not None else 0.0

    def local_path(self, path: str) -> str | None:
        return None

    def open_read(self, path: str) -> BinaryIO:
        """A streamed download of the file (FileNotFoundError if it does not exist)."""
        kind = "datasets/" if self.repo_type == "dataset" else ""
        url = f"{self.api.endpoint}/{kind}{self.repo_id}/resolve/{self.revision}/{quote(path)}"
        stack = ExitStack()
        with self._errors():
            try:
                response = stack.enter_context(
                    http_stream_backoff("GET", url, headers=build_hf_headers(token=self.api.token))
                )
                hf_raise_for_status(response)
            except RemoteEntryNotFoundError:
                stack.close()
                raise FileNotFoundError(f"{self.url}/{path}") from None
            except BaseException:
                stack.close()
                raise
        return io.BufferedReader(_Download(response.iter_bytes(), stack), buffer_size=1 << 20)

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as stream:
            return stream.read()

    def list_dir(self, path: str) -> list[str]:
        with self._errors():
            try:
                entries = list(self.api.list_repo_tree(
                    self.repo_id, path, revision=self.revision, repo_type=self.repo_type
                ))  # fmt: skip
            except RemoteEntryNotFoundError:
                return []
        names = (PurePosixPath(entry.path).name for entry in entries)
        return sorted(name for name in names if not name.startswith(TEMP_PREFIX))

    def walk(self, path: str) -> Iterator[str]:
        with self._errors():
            try:
                entries = list(self.api.list_repo_tree(
                    self.repo_id, path, recursive=True, revision=self.revision, repo_type=self.repo_type
                ))  # fmt: skip
            except RemoteEntryNotFoundError:
                return
        yield from sorted(entry.path for entry in entries if isinstance(entry, RepoFile))

    # -- writes -------------------------------------------------------------------------

    def stage(self, chunks: Chunks, folder: str) -> bytes:
        return b"".join(in_memory(chunks))

    def publish(self, staged: bytes, path: str) -> None:
        self._add(path, staged, create_only=False)

    def discard(self, staged: bytes) -> None:
        """Nothing was written anywhere."""

    def write_atomic(self, path: str, chunks: Chunks) -> None:
        self.publish(self.stage(chunks, ""), path)

    def create_exclusive(self, path: str, data: bytes) -> None:
        self._add(path, data, create_only=True)

    def remove(self, path: str) -> None:
        self._commit_once([CommitOperationDelete(path_in_repo=path)])

    def freshen(self, path: str) -> bool:
        """A repo file's time cannot be refreshed without a commit: only whether it is there."""
        return self.exists(path)

    def remove_unless_fresh(self, path: str, cutoff: float) -> bool:
        if not self.exists(path) or self.modified(path) > cutoff:
            return False
        self.remove(path)
        return True

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Collect the writes of the block and commit them at its end (none if it fails)."""
        if self._pending is not None:
            yield
            return
        self._pending, self._create_only = [], set()
        try:
            yield
            operations, create_only = self._pending, self._create_only
        finally:
            self._pending = None
        # Ref files (create-only entries and the head records that witness them) land last,
        # in one guarded commit: a lost race leaves no head record naming another's entry.
        last = [op for op in operations if op.path_in_repo in create_only or op.path_in_repo.startswith(REFS_PREFIX)]
        plain = [op for op in operations if op not in last]
        for start in range(0, len(plain), COMMIT_FILES):
            self._commit_once(plain[start : start + COMMIT_FILES])
        if last:
            self._commit_once(last, frozenset(create_only))

    def _add(self, path: str, data: bytes, create_only: bool) -> None:
        operation = CommitOperationAdd(path_in_repo=path, path_or_fileobj=bytes(data))
        with self._errors():
            # The bytes go now (LFS or Xet); the operation then keeps only their hash.
            self.api.preupload_lfs_files(self.repo_id, [operation], repo_type=self.repo_type, revision=self.revision)
        with self._lock:
            pending = self._pending
            if pending is not None:
                # A file written twice in one batch (a ref's head record) is committed once, as last written.
                pending[:] = [op for op in pending if op.path_in_repo != path]
                pending.append(operation)
                if create_only:
                    self._create_only.add(path)
        if pending is None:
            self._commit_once([operation], frozenset({path}) if create_only else frozenset())

    def _head(self) -> str:
        with self._errors():
            sha = self.api.repo_info(self.repo_id, repo_type=self.repo_type, revision=self.revision).sha
        if sha is None:
            raise RemoteError(f"{self.url}: the Hub did not say which commit {self.revision} is at")
        return sha

    def _still_to_do(self, operations: Sequence[Operation], head: str, create_only: frozenset[str]) -> list[Operation]:
        """The operations not already done at `head`; FileExistsError for a create-only path
        that exists there with other bytes."""
        added = [op for op in operations if isinstance(op, CommitOperationAdd)]
        found = self._infos([op.path_in_repo for op in added], revision=head)
        todo: list[Operation] = []
        for op in operations:
            info = found.get(op.path_in_repo) if isinstance(op, CommitOperationAdd) else None
            if info is None or not isinstance(op, CommitOperationAdd):
                todo.append(op)
            elif _same_bytes(info, op):
                continue
            elif op.path_in_repo in create_only:
                raise FileExistsError(f"{self.url}/{op.path_in_repo}")
            else:
                todo.append(op)
        return todo

    def _commit_once(self, operations: Sequence[Operation], create_only: frozenset[str] = frozenset()) -> None:
        """Commit `operations`; with `create_only` paths among them, only on top of the head
        they were checked at (guarded by parent_commit)."""
        guarded = bool(create_only)
        wait = FIRST_WAIT_SECONDS
        failure: Exception | None = None
        for _ in range(ATTEMPTS):
            head = self._head()
            operations = self._still_to_do(operations, head, create_only)
            if not operations:
                return
            try:
                with self._errors(passing=(HfHubHTTPError, httpx2.TransportError)):
                    self.api.create_commit(
                        self.repo_id, operations, commit_message=f"weightbank: {len(operations)} files",
                        repo_type=self.repo_type, revision=self.revision, parent_commit=head if guarded else None,
                    )  # fmt: skip
                return
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else 0
                if status != 412 and status != 429 and status < 500:
                    raise hub_error_line(self.url, exc) from None
                failure = exc
                if status == 412:
                    continue  # someone committed since `head`: check again on top of theirs
            except httpx2.TransportError as exc:
                failure = exc
            time.sleep(wait)
            wait *= 2
        raise RemoteError(f"{self.url}: the Hub did not take the commit after {ATTEMPTS} attempts ({failure})")

    @contextmanager
    def _errors(self, passing: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """huggingface_hub's errors as one-line weightbank errors (`passing` ones go through)."""
        try:
            yield
        except passing:
            raise
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise NotFoundError(
                f"no Hub repo {self.url} with a {self.revision} branch, or no access to it "
                "(log in with `hf auth login` or set HF_TOKEN)"
            ) from None
        except HfHubHTTPError as exc:
            raise hub_error_line(self.url, exc) from None
        except httpx2.TransportError as exc:
            raise RemoteError(f"{self.url}: {type(exc).__name__}: {exc}") from None


def hub_error_line(url: str, exc: HfHubHTTPError) -> RemoteError:
    """A Hub HTTP error as one line: the status and what the Hub said."""
    status = exc.response.status_code if exc.response is not None else "?"
    detail = exc.server_message or str(exc)
    return RemoteError(f"{url}: the Hub answered {status}: {' '.join(detail.split())}")


def _same_bytes(info: RepoFile, op: CommitOperationAdd) -> bool:
    """Whether a repo file holds exactly what `op` adds (LFS files by sha256, others by git blob id)."""
    if info.lfs is not None:
        return info.lfs.sha256 == op.upload_info.sha256.hex()
    content = op.path_or_fileobj
    return isinstance(content, bytes) and info.size == len(content) and info.blob_id == git_hash(content)


class _Download(io.RawIOBase):
    """A streamed HTTP response body as a readable file."""

    def __init__(self, chunks: Iterator[bytes], stack: ExitStack) -> None:
        self._chunks = chunks
        self._stack = stack
        self._rest = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._rest:
            self._rest = memoryview(next(self._chunks, b""))
        count = min(len(buffer), len(self._rest))
        buffer[:count] = self._rest[:count]
        self._rest = self._rest[count:]
        return count

    def close(self) -> None:
        self._stack.close()
        super().close()
