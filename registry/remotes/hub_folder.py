"""A model or adapter folder in a Hugging Face Hub repo, read for ingest.

`hf://[datasets/|spaces/]OWNER/REPO[@REVISION][/PATH]` (parsed by huggingface_hub, see `urls`).
The revision — a branch, a tag or a commit, default the repo's default branch — is resolved to
its commit once (`HfApi.repo_info`) and everything after is read at that commit, so a push to
the branch during the ingest cannot mix two versions; provenance records the repo id and the
commit. The listing (`HfApi.list_repo_tree`) gives every file's size and, for LFS files, its
sha256; bytes are read with Range requests on the repo's `resolve` URLs through
huggingface_hub's retrying HTTP helper (`http_backoff`), as HfFileSystem reads ranges. Token
from `HF_TOKEN` or `hf auth login`, endpoint from `HF_ENDPOINT`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

from ..errors import NotFoundError, RemoteError
from ..sources import SourceFile
from .folders import RemoteFolder, visible
from .hub import hub_api, hub_error_line
from .urls import HubLocation, parse_hub_url

NO_ACCESS_HINT = "log in with `hf auth login` or set HF_TOKEN"


@contextmanager
def hub_errors(location: HubLocation, access: str = "access", missing_hint: str = "") -> Iterator[None]:
    """huggingface_hub's errors about a repo, revision or path as one line naming what is missing
    (`access`: what the caller needs, e.g. "write access"; `missing_hint` follows a missing repo)."""
    repo = location.repo_url
    try:
        yield
    except GatedRepoError:
        raise NotFoundError(f"{repo} is gated: ask for access on its page on the Hub, then {NO_ACCESS_HINT}") from None
    except RepositoryNotFoundError:
        raise NotFoundError(f"no Hub repo {repo}, or no {access} to it ({NO_ACCESS_HINT}){missing_hint}") from None
    except RevisionNotFoundError:
        raise NotFoundError(f"{repo} has no revision {location.revision!r} (a branch, tag or commit)") from None
    except RemoteEntryNotFoundError:
        raise NotFoundError(f"{location.url()}: no such folder in the repo") from None
    except HfHubHTTPError as exc:
        raise hub_error_line(location.url(), exc) from None
    except httpx2.TransportError as exc:
        raise RemoteError(f"{location.url()}: cannot reach the Hub: {type(exc).__name__}: {exc}") from None


class HubFolder(RemoteFolder):
    """A folder of a Hub repo at one commit."""

    def __init__(self, url: str) -> None:
        self.location = parse_hub_url(url)
        self.api = hub_api()
        location = self.location
        with hub_errors(location):
            info = self.api.repo_info(location.repo_id, repo_type=location.repo_type, revision=location.revision)
            if info.sha is None:
                raise RemoteError(f"{location.url()}: the Hub did not say which commit it is at")
            self.commit = info.sha
            entries = self.api.list_repo_tree(
                location.repo_id, location.path or None, recursive=True, revision=self.commit,
                repo_type=location.repo_type,
            )  # fmt: skip
            prefix = f"{location.path}/" if location.path else ""
            files = {
                entry.path.removeprefix(prefix): SourceFile(entry.size, entry.lfs.sha256 if entry.lfs else None)
                for entry in entries
                if isinstance(entry, RepoFile) and entry.path.startswith(prefix)
            }
        files = {rel: file for rel, file in sorted(files.items()) if visible(rel)}
        if not files:
            raise NotFoundError(f"{location.url()}: nothing is there (an empty repo or folder)")
        name = location.repo_id + (f"/{location.path}" if location.path else "")
        super().__init__(location.url(), name, files)

    def fetch(self, rel: str, start: int, end: int) -> bytes:
        location = self.location
        url = hf_hub_url(
            location.repo_id, f"{location.path}/{rel}" if location.path else rel, repo_type=location.repo_type,
            revision=self.commit, endpoint=self.api.endpoint,
        )  # fmt: skip
        headers = {**build_hf_headers(token=self.api.token), "Range": f"bytes={start}-{end - 1}"}
        with hub_errors(location):
            response = http_backoff("GET", url, headers=headers)
            hf_raise_for_status(response)
        return response.content

    def provenance(self) -> dict[str, Any]:
        """The repo and the commit the revision resolved to (and the URL as given)."""
        location = self.location
        return {"source": self.name, "url": location.url(), "repo": location.repo_id, "revision": self.commit} | (
            {"repo_type": location.repo_type} if location.repo_type != "model" else {}
        )
