"""Remote URLs: the three kinds, their canonical form, and the store each one opens.

- `file:///abs/path`: a store in a local (or mounted) folder.
- `s3://BUCKET/PREFIX`: s3fs; credentials, region and endpoint come from the standard AWS
  environment and config files (`AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, …).
- `hf://OWNER/REPO` (a model repo), `hf://datasets/OWNER/REPO` or `hf://OWNER/REPO?type=dataset`:
  a Hugging Face Hub repo through huggingface_hub (token from `HF_TOKEN` or `hf auth login`,
  endpoint from `HF_ENDPOINT`).

A remote is a store with the same layout as a local one, so `open_remote` returns a `Store`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ..store import Store

_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HUB_TYPES = {"models": "model", "datasets": "dataset"}
_EXPECTED = "expected file://PATH, s3://BUCKET/PREFIX or hf://OWNER/REPO (hf://datasets/OWNER/REPO)"


def normalize(url: str) -> str:
    """The canonical form of a remote URL; InputError (naming the URL) if it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("file", "s3", "hf"):
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


def hub_repo(url: str) -> tuple[str, str]:
    """(repo type, repo id) of an `hf://` URL."""
    path, _, query = url.removeprefix("hf://").partition("?")
    parts = path.strip("/").split("/")
    repo_type = "model"
    if len(parts) == 3 and parts[0] in _HUB_TYPES:
        repo_type = _HUB_TYPES[parts.pop(0)]
    if query:
        if query not in ("type=model", "type=dataset"):
            raise InputError(f"invalid Hub remote URL {url!r}: the only query is ?type=model or ?type=dataset")
        repo_type = query.removeprefix("type=")
    if len(parts) != 2 or not all(_HUB_NAME.fullmatch(part) and ".." not in part for part in parts):
        raise InputError(f"invalid Hub remote URL {url!r}: expected hf://OWNER/REPO or hf://datasets/OWNER/REPO")
    return repo_type, "/".join(parts)


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
