"""Remote URLs: the three kinds of bank-store remote, their canonical form, the store each one
opens; and Hub URLs, as huggingface_hub spells them.

- `file:///abs/path`, or a plain path: a store in a local (or mounted) folder.
- `s3://BUCKET/PREFIX`: s3fs; credentials, region and endpoint come from the standard AWS
  environment and config files (`AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).
- `hf://OWNER/REPO` (a model repo) or `hf://datasets/OWNER/REPO`: a Hugging Face Hub repo through
  huggingface_hub (token from `HF_TOKEN` or `hf auth login`, endpoint from `HF_ENDPOINT`).

`hf://` URLs are parsed by huggingface_hub's own `parse_hf_uri` — the parser behind
`HfFileSystem.resolve_path` — so they mean here what they mean to HfFileSystem:
`hf://[models/|datasets/|spaces/]OWNER/REPO[@REVISION][/PATH]`. A bank-store remote is a whole
repo on its main branch (no revision, no path); the model folders `ingest` reads and `export`
publishes may name both. `?type=dataset` is kept as an alias of `datasets/`.

A remote is a store with the same layout as a local one, so `open_remote` returns a `Store`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..names import check_relative_path
from ..store import Store

_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_QUERY_TYPES = {"type=model": "models/", "type=dataset": "datasets/"}
_STORE_REPO_TYPES = ("model", "dataset")
_EXPECTED = "expected a folder, file://PATH, s3://BUCKET/PREFIX or hf://OWNER/REPO (hf://datasets/OWNER/REPO)"


def normalize(url: str) -> str:
    """The canonical form of a remote URL (a plain path is a `file://` remote); InputError
    (naming the URL) if it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "file", url
    if scheme not in ("file", "s3", "hf"):
        raise InputError(f"unsupported remote URL {url!r}: {_EXPECTED}")
    if scheme == "file":
        if not rest:
            raise InputError(f"remote URL {url!r} names no folder: {_EXPECTED}")
        return "file://" + str(Path(rest).expanduser().resolve())
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _S3_BUCKET.fullmatch(bucket) or "//" in prefix:
            raise InputError(f"invalid S3 remote URL {url!r}: expected s3://BUCKET/PREFIX")
        return f"s3://{bucket}/{prefix.strip('/')}".rstrip("/")
    repo_type, repo_id = hub_repo(url)
    return f"hf://datasets/{repo_id}" if repo_type == "dataset" else f"hf://{repo_id}"


def parse_hub_url(url: str, what: str = "Hub URL") -> HubLocation:
    """Repo type, repo id, revision and path of an `hf://` URL, parsed by huggingface_hub."""
    from huggingface_hub import parse_hf_uri
    from huggingface_hub.errors import HfUriError

    body, _, query = url.partition("?")
    if query:
        if query not in _QUERY_TYPES:
            raise InputError(f"invalid {what} {url!r}: the only query is ?type=model or ?type=dataset")
        body = "hf://" + _QUERY_TYPES[query] + body.removeprefix("hf://")
    try:
        parsed = parse_hf_uri(body.rstrip("/"))
    except HfUriError as exc:
        detail = str(exc).split(". ", 1)[-1].strip().rstrip(".")
        raise InputError(f"invalid {what} {url!r}: {detail} (expected hf://[datasets/]OWNER/REPO[@REVISION])") from None
    if parsed.is_bucket:
        raise InputError(f"invalid {what} {url!r}: a Hub storage bucket, not a repo")
    if parsed.path_in_repo:
        check_relative_path(parsed.path_in_repo, f"{what} {url!r}")
    return HubLocation(parsed.type, parsed.id, parsed.revision, parsed.path_in_repo)


@dataclass(frozen=True)
class HubLocation:
    """A place on the Hub: a repo, optionally at a revision, optionally a folder inside it."""

    repo_type: str  # model, dataset, space
    repo_id: str
    revision: str | None = None
    path: str = ""

    @property
    def repo_url(self) -> str:
        """`hf://[datasets/|spaces/]OWNER/REPO`."""
        return f"hf://{'' if self.repo_type == 'model' else self.repo_type + 's/'}{self.repo_id}"

    def url(self, revision: str | None = None) -> str:
        """`hf://[datasets/]OWNER/REPO[@REVISION][/PATH]` (the revision given, else the one parsed)."""
        at = revision or self.revision
        return self.repo_url + (f"@{at}" if at else "") + (f"/{self.path}" if self.path else "")


def hub_repo(url: str) -> tuple[str, str]:
    """(repo type, repo id) of the `hf://` URL of a bank-store remote: a whole model or dataset repo."""
    location = parse_hub_url(url, "Hub remote URL")
    if location.revision is not None or location.path or location.repo_type not in _STORE_REPO_TYPES:
        raise InputError(
            f"invalid Hub remote URL {url!r}: a bank store is a whole model or dataset repo on its main branch "
            "(hf://OWNER/REPO or hf://datasets/OWNER/REPO, no @REVISION or folder)"
        )
    return location.repo_type, location.repo_id


def open_remote(url: str) -> Store:
    """The store a (canonical) remote URL names. It never fetches missing objects from
    remotes of its own: a transfer reads what the remote holds, nothing else."""
    if url.startswith("file://"):
        return Store(url.removeprefix("file://"), fetch_lazily=False)
    if url.startswith("hf://"):
        from .hub import HubBackend  # huggingface_hub is only imported for Hub remotes

        repo_type, repo_id = hub_repo(url)
        return Store(backend=HubBackend(repo_id, repo_type), fetch_lazily=False)
    return Store(url, fetch_lazily=False)
