"""Where ingest reads a model or adapter folder from: the small interface its checks run over.

`ingest.scan_source` validates a folder through a `Source` and nothing else, so a local folder,
a Hub repo and an S3 prefix get the very same checks. This module holds the interface and the
local folder (`LocalSource`); `remotes.folders` holds the Hub and fsspec ones, and
`open_source` picks one for a path or URL.

A local folder is read as it lies: links are followed only inside the folder (or inside its
Hugging Face cache repo), special files are refused before they are opened, and tensors are
handed on as byte ranges of the open file (copied by the kernel, hashed from a memory map).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from .errors import InputError
from .file_range import FileRange

if TYPE_CHECKING:
    from .safetensors_format import SafetensorsHeader, TensorEntry

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class SourceFile:
    """A file of a source folder: its size; `sha256` where the source vouches for the bytes (the
    Hub's LFS oid, checked against what is read); `path` where it is a local file."""

    size: int
    sha256: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class WeightFile:
    """A safetensors file to ingest, with its validated header."""

    rel: str
    header: SafetensorsHeader
    file: SourceFile


TensorData = Iterator[tuple[str, "TensorEntry", Buffer | FileRange]]


class Source(Protocol):
    """A model or adapter folder to read. Paths are relative POSIX paths inside it."""

    label: str  # the folder or URL, as messages name it
    name: str  # what provenance records as the source: a folder's name, a repo id
    skipped: list[str]  # entries that are not followed (links to folders)

    def top_level(self) -> set[str]:
        """Names of the entries directly in the folder (files and folders; hidden ones left out)."""
        ...

    def files(self) -> dict[str, SourceFile]:
        """Every file below the folder, by relative path (hidden entries left out)."""
        ...

    def where(self, rel: str) -> str:
        """How messages name one file."""
        ...

    def check(self, rel: str) -> None:
        """Refuse a file ingest must not read (locally: a link out of the folder, a FIFO)."""
        ...

    def open(self, rel: str) -> BinaryIO:
        """The file as a stream read from its start (safetensors headers are read this way)."""
        ...

    def read(self, rel: str) -> bytes:
        """The whole file."""
        ...

    def tensors(self, weight: WeightFile) -> TensorData:
        """Each tensor's bytes, in file order; a source that vouches for the file's sha256
        checks it once the last tensor is read (IntegrityError if it differs)."""
        ...

    def provenance(self) -> dict[str, Any]:
        """What the bank's activity record says about where it came from."""
        ...


def open_source(location: str | Path) -> Source:
    """The source a folder path, `file://` URL, `hf://` URL or other fsspec URL names."""
    text = str(location)
    if "://" not in text:
        return LocalSource(Path(location))
    if text.startswith("file://"):
        return LocalSource(Path(text.removeprefix("file://")))
    from .remotes.folders import open_remote_folder  # huggingface_hub and fsspec only for URLs

    return open_remote_folder(text)


class LocalSource:
    """A folder on local disk (or a mount)."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise InputError(f"{folder}: not a folder")
        self.root = folder
        self.label = str(folder)
        self.name = folder.resolve().name
        self.skipped: list[str] = []
        self._files: dict[str, SourceFile] | None = None

    def top_level(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if not p.name.startswith(".")}

    def files(self) -> dict[str, SourceFile]:
        """Every file, walking the folder; links to folders are listed in `skipped`, not followed."""
        if self._files is None:
            self._files = {}
            for folder, dirs, names in os.walk(self.root):
                links = sorted(d for d in dirs if (Path(folder) / d).is_symlink() and not d.startswith("."))
                self.skipped += [
                    f"{(Path(folder) / d).relative_to(self.root).as_posix()} (a link to a folder: not followed)"
                    for d in links
                ]
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
                for name in sorted(names):
                    if not name.startswith("."):
                        path = Path(folder) / name
                        self._files[path.relative_to(self.root).as_posix()] = SourceFile(_size(path), path=path)
        return self._files

    def where(self, rel: str) -> str:
        return str(self.root / rel)

    def check(self, rel: str) -> None:
        regular_file(self.root / rel, self.root)

    def open(self, rel: str) -> BinaryIO:
        return open(regular_file(self.root / rel, self.root), "rb")

    def read(self, rel: str) -> bytes:
        return regular_file(self.root / rel, self.root).read_bytes()

    def tensors(self, weight: WeightFile) -> TensorData:
        """Each tensor as a byte range of the open file, in file order."""
        yield from tensor_ranges(regular_file(self.root / weight.rel, self.root), weight.header)

    def provenance(self) -> dict[str, Any]:
        return {"source": self.name}


def tensor_ranges(path: Path, header: SafetensorsHeader) -> Iterator[tuple[str, TensorEntry, FileRange]]:
    """Each tensor of a local safetensors file (whose header was read) as a byte range of the
    open file, in file order."""
    with open(path, "rb") as stream:
        for name, entry in sorted(header.tensors.items(), key=lambda item: item[1].begin):
            yield name, entry, FileRange(stream.fileno(), header.data_start + entry.begin, entry.nbytes)


def _size(path: Path) -> int:
    """A file's size; 0 for what cannot be stat'ed (a broken link: refused when it is checked)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _link_roots(folder: Path) -> list[Path]:
    """Where links in a model folder may point: inside it, or — for a Hugging Face cache
    snapshot (`…/models--org--name/snapshots/<rev>/`, whose files link to `../../blobs/`) —
    inside that repo's cache folder."""
    real = folder.resolve()
    roots = [real]
    if real.parent.name == "snapshots" and (real.parent.parent / "blobs").is_dir():
        roots.append(real.parent.parent)
    return roots


def regular_file(path: Path, folder: Path | None = None) -> Path:
    """`path`, if it is a regular file or a link to one that stays inside its model folder
    `folder` (default: the file's own folder; see `_link_roots`). Anything else — a link out,
    a FIFO, a device, a folder — is refused before it is opened (a FIFO would block forever,
    a link out could leak a secret)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{path.parent}: file name {path.name!r} is not valid UTF-8") from None
    if path.is_symlink():
        target = path.resolve()
        if not any(target.is_relative_to(root) for root in _link_roots(folder or path.parent)):
            raise InputError(
                f"{path}: links outside the model folder (to {target}); only links that stay inside it, or inside "
                "a Hugging Face cache repo, are followed"
            )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{path}: broken link") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"{path}: not a regular file")
    return path
