"""Model and adapter folders somewhere else — a Hub repo, an S3 prefix, any fsspec URL — read
for ingest through the same `sources.Source` interface as a local folder.

A remote folder is listed once; headers are read by range reads of exactly their bytes, then
the tensors by range reads of the data section, several in flight (`range_reads`), hashed as
the parts arrive. Nothing is copied to local disk first. Files whose sha256 the listing gives
(the Hub's LFS oid) are checked against it, and a weight file whose sha256 the store's hash
cache knows is not read at all (see `ingest`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, cast

from ..backends import url_to_filesystem
from ..errors import InputError, IntegrityError, NotFoundError, RemoteError
from ..range_reads import IN_FLIGHT, Fetch, RangeStream, checked_fetch, read_tensors
from ..sources import Source, SourceFile, TensorData, WeightFile

KEPT_BYTES = 1 << 20  # files read whole up to this size are read once


def open_remote_folder(url: str) -> Source:
    """The folder an `hf://` or other fsspec URL names (listed now: a missing one is an error here)."""
    if url.startswith("hf://"):
        from .hub_folder import HubFolder  # huggingface_hub only for the Hub

        return HubFolder(url)
    return FsspecFolder(url)


def visible(rel: str) -> bool:
    """Whether a listed path is part of the folder (hidden files and folders are not)."""
    return not any(part.startswith(".") for part in rel.split("/"))


class RemoteFolder:
    """A folder read by byte ranges; subclasses list it (`files`) and `fetch` byte ranges."""

    def __init__(self, label: str, name: str, files: dict[str, SourceFile]) -> None:
        self.label = label
        self.name = name
        self.skipped: list[str] = []
        self._files = files
        self._heads: dict[str, RangeStream] = {}
        self._small: dict[str, bytes] = {}

    def fetch(self, rel: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file `rel`."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        raise NotImplementedError

    def top_level(self) -> set[str]:
        return {rel.partition("/")[0] for rel in self._files}

    def files(self) -> dict[str, SourceFile]:
        return self._files

    def where(self, rel: str) -> str:
        return f"{self.label}/{rel}"

    def check(self, rel: str) -> None:
        """Remote files are plain bytes: nothing to refuse before reading."""

    def _range(self, rel: str) -> Fetch:
        return checked_fetch(lambda start, end: self.fetch(rel, start, end), self.where(rel))

    def open(self, rel: str) -> BinaryIO:
        stream = self._heads[rel] = RangeStream(self._range(rel), self._files[rel].size)
        return cast(BinaryIO, stream)

    def read(self, rel: str) -> bytes:
        """The whole file (small ones are kept: the scan reads configs and the index that ingest stores)."""
        if rel in self._small:
            return self._small[rel]
        file = self._files[rel]
        data = self._range(rel)(0, file.size) if file.size else b""
        if file.sha256 is not None and hashlib.sha256(data).hexdigest() != file.sha256:
            raise IntegrityError(f"{self.where(rel)}: its bytes do not hash to the sha256 the source gives")
        if file.size <= KEPT_BYTES:
            self._small[rel] = data
        return data

    def tensors(self, weight: WeightFile) -> TensorData:
        """The tensors of a file whose header `open` read, by range reads of its data section."""
        head = bytes(self._heads[weight.rel].consumed)
        with ThreadPoolExecutor(IN_FLIGHT, "weightbank-read") as pool:
            yield from read_tensors(
                self._range(weight.rel), weight.header, head, weight.file.size, weight.file.sha256,
                self.where(weight.rel), pool,
            )  # fmt: skip


class FsspecFolder(RemoteFolder):
    """A folder on S3 (s3fs: credentials, region and endpoint from the standard AWS environment)
    or any other fsspec filesystem."""

    def __init__(self, url: str) -> None:
        label = url.rstrip("/")
        try:
            self.fs, root = url_to_filesystem(label)
        except (ValueError, ImportError) as exc:
            raise InputError(f"{url}: not a folder weightbank can read ({exc})") from None
        self.root = root.rstrip("/")
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            found = {}
        except PermissionError as exc:
            raise RemoteError(f"{label}: access denied ({exc})") from None
        files = {
            path[len(self.root) + 1 :]: SourceFile(int(info["size"]))
            for path, info in found.items()
            if path.startswith(self.root + "/") and info.get("type") != "directory"
        }
        files = {rel: file for rel, file in sorted(files.items()) if visible(rel)}
        if not files:
            raise NotFoundError(f"{label}: not a folder (nothing is there)")
        super().__init__(label, self.root.rpartition("/")[2], files)

    def fetch(self, rel: str, start: int, end: int) -> bytes:
        return bytes(self.fs.cat_file(f"{self.root}/{rel}", start=start, end=end))

    def provenance(self) -> dict[str, Any]:
        return {"source": self.name, "url": self.label}
