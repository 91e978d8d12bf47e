"""Where `export REF URL` publishes a bank's folder (see `publish`): a Hub repo, or a prefix of a
bucket (S3, any fsspec filesystem).

On an object store each file is one PUT, so the folder cannot appear at once; instead it is
written into an empty prefix only (nothing of yours is overwritten), the weights first and the
configs, model card and `weightbank.json` last, so nothing is loadable before everything is
there; a failure removes what was written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..backends import url_to_filesystem
from ..checkpoints import BANK_MANIFEST
from ..errors import InputError, NotFoundError
from ..publish import PublishTarget


def open_target(url: str, *, revision: str | None = None, private: bool = False, create: bool = False) -> PublishTarget:
    """The target a URL names, checked (the repo or bucket exists, or is created; access) before
    anything is written. `revision`, `private` and `create` apply to `hf://` URLs."""
    if url.startswith("hf://"):
        from .hub_target import HubTarget  # huggingface_hub only for the Hub

        return HubTarget(url, revision=revision, private=private, create=create)
    if revision is not None or private or create:
        raise InputError(f"{url}: --revision, --private and --create apply to hf:// exports")
    return BucketTarget(url)


class BucketTarget:
    """An empty prefix of a bucket, or of any fsspec filesystem (credentials from its standard
    environment: for S3 the AWS variables and config files)."""

    repo_id: str | None = None  # not a Hub repo

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        try:
            self.fs, root = url_to_filesystem(self.url)
        except (ValueError, ImportError) as exc:
            raise InputError(f"{url}: not a place weightbank can write to ({exc})") from None
        self.root = root.rstrip("/")
        bucket = self.root.partition("/")[0]
        if self.url.partition("://")[0] in ("s3", "s3a", "gs", "gcs") and not self.fs.exists(bucket):
            raise NotFoundError(f"{self.url}: there is no bucket {bucket!r} (or no access to it)")
        try:
            present = self.fs.find(self.root)
        except FileNotFoundError:
            present = []
        if present:
            raise InputError(f"{self.url}: already holds files; export writes only into an empty prefix")
        self._sent: list[str] = []
        self._small: dict[str, bytes] = {}

    def add_file(self, rel: str, path: Path) -> str | None:
        target = f"{self.root}/{rel}"
        self.fs.put_file(str(path), target)
        self._sent.append(target)
        return None

    def add_bytes(self, rel: str, data: bytes) -> None:
        self._small[rel] = data

    def finish(self, message: str) -> str:
        """Write the small files after the weights, the bank's manifest last."""
        for rel in sorted(self._small, key=lambda rel: rel == BANK_MANIFEST):
            target = f"{self.root}/{rel}"
            self.fs.pipe_file(target, self._small[rel])
            self._sent.append(target)
        return self.url

    def abort(self) -> None:
        for target in self._sent:
            with contextlib.suppress(OSError):
                self.fs.rm_file(target)
