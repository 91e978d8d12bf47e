"""A Hub model repo a bank is published to, in one commit (see `publish`).

`hf://ORG/REPO[/PATH]` with `--revision BRANCH` (or `@BRANCH` in the URL; default `main`). The
repo must exist, or `--create` creates it (`--private`: created private; an existing public
repo is then refused rather than published to). Each weight file is pre-uploaded as soon as it
is written (`HfApi.preupload_lfs_files`: Xet where `hf_xet` is installed and the repo uses
it, else LFS — huggingface_hub's choice), then one `create_commit` adds every file and deletes
the files the bank does not have, so the branch goes from the old model to the new in one
step. The commit names its `parent_commit` (the branch head seen at the start): if someone
commits in between, the Hub refuses it and nothing changes. A branch that does not exist yet
is created from the default branch just before the commit.
"""

from __future__ import annotations

import threading
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RevisionNotFoundError
from huggingface_hub.hf_api import RepoFile

from ..errors import ConflictError, InputError
from .hub import hub_api
from .hub_folder import hub_errors
from .urls import parse_hub_url


class HubTarget:
    """A branch of a Hub model repo (optionally a folder inside it)."""

    def __init__(self, url: str, *, revision: str | None, private: bool, create: bool) -> None:
        location = parse_hub_url(url)
        if location.repo_type != "model":
            raise InputError(f"{url}: export publishes to model repos (hf://ORG/REPO), not to a {location.repo_type}")
        if revision is not None and location.revision is not None and revision != location.revision:
            raise InputError(f"{url}: names revision {location.revision!r} but --revision says {revision!r}")
        self.branch = revision or location.revision or "main"
        self.location = location
        self.repo_id = location.repo_id
        self.url = location.url(self.branch if self.branch != "main" else None)
        self.api = hub_api()
        self._operations: list[CommitOperationAdd] = []
        self._lock = threading.Lock()
        with hub_errors(location, "write access", "" if create else "; --create creates it"):
            if create:
                self.api.create_repo(location.repo_id, private=private, exist_ok=True)
            if private and not self.api.repo_info(location.repo_id).private:
                raise InputError(
                    f"{location.repo_url} is public; refusing to publish with --private (make it private first)"
                )
            self._head = self._branch_head()
            self._present = self._files_at(self._head or self.api.repo_info(location.repo_id).sha)

    def _branch_head(self) -> str | None:
        """The commit the branch is at, or None if it does not exist yet."""
        try:
            return self.api.repo_info(self.repo_id, revision=self.branch).sha
        except RevisionNotFoundError:
            return None

    def _files_at(self, commit: str | None) -> set[str]:
        """The repo's files under the target folder at `commit` (those the commit may replace)."""
        prefix = f"{self.location.path}/" if self.location.path else ""
        try:
            entries = list(self.api.list_repo_tree(self.repo_id, self.location.path or None, recursive=True,
                                                   revision=commit))  # fmt: skip
        except RemoteEntryNotFoundError:  # the folder does not exist yet
            return set()
        return {entry.path for entry in entries if isinstance(entry, RepoFile) and entry.path.startswith(prefix)}

    def _path(self, rel: str) -> str:
        return f"{self.location.path}/{rel}" if self.location.path else rel

    def add_file(self, rel: str, path: Path) -> str | None:
        """Pre-upload one weight file now; the commit at the end only names it (by its sha256)."""
        operation = CommitOperationAdd(path_in_repo=self._path(rel), path_or_fileobj=str(path))
        revision = self.branch if self._head is not None else None  # a new branch starts from the default one
        with hub_errors(self.location, access="write access"):
            self.api.preupload_lfs_files(self.repo_id, [operation], revision=revision)
        if operation.path_or_fileobj != b"":  # a file the Hub keeps in git travels in the commit itself
            operation.path_or_fileobj = path.read_bytes()
        with self._lock:
            self._operations.append(operation)
        return operation.upload_info.sha256.hex()

    def add_bytes(self, rel: str, data: bytes) -> None:
        with self._lock:
            self._operations.append(CommitOperationAdd(path_in_repo=self._path(rel), path_or_fileobj=data))

    def finish(self, message: str) -> str:
        """One commit on top of the head seen at the start: every file added, the others deleted."""
        added = {operation.path_in_repo for operation in self._operations}
        stale = sorted(path for path in self._present - added if not path.rpartition("/")[2].startswith("."))
        deletions = [CommitOperationDelete(path_in_repo=path) for path in stale]
        with hub_errors(self.location, access="write access"):
            if self._head is None:
                self.api.create_branch(self.repo_id, branch=self.branch)
                self._head = self._branch_head()
            try:
                commit = self.api.create_commit(
                    self.repo_id, [*self._operations, *deletions], commit_message=message, revision=self.branch,
                    parent_commit=self._head,
                )  # fmt: skip
            except HfHubHTTPError as exc:
                if exc.response is not None and exc.response.status_code == 412:
                    raise ConflictError(
                        f"{self.url}: someone committed to {self.branch} while this was published; nothing changed, "
                        "run the export again"
                    ) from None
                raise
        return self.location.url(commit.oid)

    def abort(self) -> None:
        """Nothing to undo: pre-uploaded files are not part of the repo until a commit names them."""
