"""Ingest: a Hugging Face model folder or a PEFT adapter folder → a bank.

The folder is scanned and validated completely (every safetensors header, the shard index,
pickle-only weights, an adapter's fit to its base) before anything is written, so bad
input leaves the store untouched. Tensors are then streamed one at a time: each tensor's
byte range is read into one reusable buffer, hashed, and written as a canonical tensor
object only if the store lacks it. Peak memory is about the largest tensor.

A folder's `model.sig` (an OpenSSF model signature of the folder, not part of the model) is
never stored; under a trust policy it is verified before anything is written, and the
signer is recorded in the bank's provenance.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .banks import Bank, FileRecord, Parent, TensorRecord, content_of, new_bank_manifest
from .checkpoints import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MODEL_CONFIG, WEIGHTS, WEIGHTS_INDEX, source_layout
from .digest import PREFIX, is_digest
from .errors import InputError, SchemaError, WeightbankError
from .file_range import FileRange
from .folder_signing import SIGNATURE_FILE, verify_folder
from .hash_cache import HashCache, file_identity
from .json_input import parse_json_object
from .manifests import validate_manifest
from .names import check_ref_name, check_relative_path
from .naming import with_article
from .objects import PutResult
from .peft_adapter import check_fits_base, check_lora_config, with_tied_head
from .progress import byte_progress
from .provenance import new_activity
from .safetensors_format import SafetensorsHeader, TensorEntry, read_header
from .store import Store
from .trust import TrustPolicy

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Other serialisations of the same weights: never stored, listed as skipped.
FOREIGN_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".onnx", ".gguf", ".ot", ".tflite")


@dataclass(frozen=True)
class WeightFile:
    """A safetensors file to ingest, with its validated header."""

    path: Path
    header: SafetensorsHeader


@dataclass
class FolderScan:
    """Everything ingest will read, validated, before anything is written."""

    kind: str  # "base" or "adapter"
    folder: Path
    config: dict[str, Any]
    weights: list[WeightFile]
    files: dict[str, Path]
    skipped: list[str] = field(default_factory=list)
    signed_by: dict[str, str] | None = None  # who signed the folder's model.sig, once verified

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: e.shape for w in self.weights for name, e in w.header.tensors.items()}

    def total_bytes(self) -> int:
        weights = sum(e.nbytes for w in self.weights for e in w.header.tensors.values())
        return weights + sum(p.stat().st_size for p in self.files.values())


@dataclass(frozen=True)
class IngestResult:
    """What an ingest stored."""

    name: str
    version: int
    digest: str
    bank_type: str
    tensors: int
    files: int
    total_bytes: int
    new_objects: int
    new_bytes: int
    unchanged: bool
    skipped: list[str]


def scan_folder(folder: str | Path) -> FolderScan:
    """Validate a model or adapter folder and list what ingest will read."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{folder}: not a folder")
    top = {p.name: p for p in root.iterdir() if not p.name.startswith(".")}
    kind, config_name = ("adapter", ADAPTER_CONFIG) if ADAPTER_CONFIG in top else ("base", MODEL_CONFIG)
    weight_names = _weight_files(root, top, kind)
    if config_name not in top:
        raise InputError(f"{root}: no {config_name}; a model folder needs its Hugging Face config")
    config = _read_json(top[config_name], "config")
    if kind == "adapter":
        check_lora_config(config, str(top[config_name]))
    weights = [_read_weight_file(top[name]) for name in weight_names]
    _check_unique_tensors(weights)
    if kind == "base" and WEIGHTS_INDEX in top:
        _check_index(top[WEIGHTS_INDEX], weights)
    files, skipped = _other_files(root, set(weight_names) | {WEIGHTS_INDEX})
    return FolderScan(kind, root, config, weights, files, skipped)


def _weight_files(root: Path, top: dict[str, Path], kind: str) -> list[str]:
    """Names of the top-level safetensors files that hold the weights."""
    safetensors = sorted(n for n in top if n.endswith(".safetensors"))
    if kind == "adapter":
        if ADAPTER_WEIGHTS in top:
            return [ADAPTER_WEIGHTS]
    elif WEIGHTS_INDEX in top:
        return sorted(set(_index_map(top[WEIGHTS_INDEX]).values()))
    elif WEIGHTS in top:
        return [WEIGHTS]
    elif len(safetensors) == 1:
        return safetensors
    elif safetensors:
        raise InputError(
            f"{root}: several safetensors files ({', '.join(safetensors)}) and no {WEIGHTS_INDEX} saying which hold "
            "the model"
        )
    pickles = sorted(n for n in top if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise InputError(
            f"{root}: weights are only in pickle files ({', '.join(pickles)}); weightbank never loads pickle — "
            "convert them to safetensors first (save_pretrained(..., safe_serialization=True) in an environment "
            "you trust)"
        )
    expected = ADAPTER_WEIGHTS if kind == "adapter" else f"{WEIGHTS} or {WEIGHTS_INDEX}"
    raise InputError(f"{root}: no weights found (expected {expected})")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    return parse_json_object(regular_file(path).read_bytes(), str(path), what)


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


def _index_map(index_path: Path) -> dict[str, str]:
    weight_map = _read_json(index_path, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise InputError(f"{index_path}: 'weight_map' must map tensor names to shard file names")
    for shard in set(weight_map.values()):
        check_relative_path(shard, str(index_path))
        if "/" in shard:
            raise InputError(f"{index_path}: shard {shard!r} is not in the model folder itself")
        if not (index_path.parent / shard).is_file():
            raise InputError(f"{index_path}: shard {shard!r} is missing")
    return weight_map


def _check_index(index_path: Path, weights: list[WeightFile]) -> None:
    weight_map = _index_map(index_path)
    for weight in weights:
        listed = {name for name, shard in weight_map.items() if shard == weight.path.name}
        stored = set(weight.header.tensors)
        if listed != stored:
            missing, extra = sorted(listed - stored), sorted(stored - listed)
            detail = f"missing from the shard: {missing[:3]}" if missing else f"not in the index: {extra[:3]}"
            raise InputError(f"{index_path}: index and shard {weight.path.name} disagree ({detail})")


def _read_weight_file(path: Path) -> WeightFile:
    size = regular_file(path).stat().st_size
    with open(path, "rb") as stream:
        return WeightFile(path, read_header(stream, size, str(path)))


def _check_unique_tensors(weights: list[WeightFile]) -> None:
    seen: dict[str, Path] = {}
    for weight in weights:
        for name in weight.header.tensors:
            if name in seen:
                raise InputError(f"tensor {name!r} is in both {seen[name].name} and {weight.path.name}")
            seen[name] = weight.path


def _other_files(root: Path, weight_names: set[str]) -> tuple[dict[str, Path], list[str]]:
    """Every other file by relative path (links followed only inside the folder, see
    `regular_file`; hidden entries skipped)."""
    files: dict[str, Path] = {}
    skipped: list[str] = []
    for folder, dirs, names in os.walk(root):
        links = sorted(d for d in dirs if (Path(folder) / d).is_symlink() and not d.startswith("."))
        skipped += [
            f"{(Path(folder) / d).relative_to(root).as_posix()} (a link to a folder: not followed)" for d in links
        ]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if name.startswith(".") or rel in weight_names:
                continue
            if rel == SIGNATURE_FILE:
                skipped.append(f"{rel} (the folder's signature; --require-signed checks it)")
                continue
            top_level = "/" not in rel
            if name.endswith(PICKLE_SUFFIXES + FOREIGN_WEIGHT_SUFFIXES) or (
                top_level and name.endswith(".safetensors")
            ):
                skipped.append(rel)
                continue
            files[check_relative_path(rel, str(root))] = regular_file(path, root)
    return files, skipped


def ingest_folder(
    store: Store,
    folder: str | Path,
    name: str,
    *,
    base: str | None = None,
    message: str = "",
    show_progress: bool = False,
    rehash: bool = False,
    force_type: bool = False,
    policy: TrustPolicy | None = None,
) -> IngestResult:
    """Ingest a model or adapter folder as the next version of ref `name`.

    Weight files already ingested and unchanged since (same inode, size, mtime, ctime) are not
    re-read unless `rehash` is set. A new version keeps the kind of bank `name` holds (a base
    stays a base) unless `force_type`. Provenance records the folder's name, not its path.
    With a `policy`, the folder's `model.sig` must be signed by a key it trusts.
    """
    check_ref_name(name)
    signer = verify_folder(Path(folder), policy) if policy is not None else None  # before a file is parsed
    scan = scan_folder(folder)
    scan.signed_by = signer.to_provenance() if signer is not None else None
    parents: list[Parent] = []
    if scan.kind == "adapter":
        base_bank = _adapter_base(store, base, scan)
        parents = [Parent(base_bank.digest, "base")]
    elif base is not None:
        raise InputError(f"{folder}: --base applies to adapter folders; this is a model folder")
    if not force_type:
        store.check_type(name, scan.kind)
    _check_storable(scan, parents, message)  # everything is checked before the first object is written

    tensors, files, created = _store_contents(store, scan, show_progress, rehash)
    manifest = _manifest(scan, tensors, files, parents, message)
    version, digest, unchanged = record_bank(store, name, manifest, "ingest", message, force_type=force_type)
    return IngestResult(
        name=name,
        version=version,
        digest=digest,
        bank_type=scan.kind,
        tensors=len(tensors),
        files=len(files),
        total_bytes=scan.total_bytes(),
        new_objects=sum(1 for r in created if r.created),
        new_bytes=sum(r.size for r in created if r.created),
        unchanged=unchanged,
        skipped=scan.skipped,
    )


def _manifest(
    scan: FolderScan,
    tensors: dict[str, TensorRecord],
    files: dict[str, FileRecord],
    parents: list[Parent],
    message: str,
) -> dict[str, Any]:
    metadata = scan.weights[0].header.metadata
    return new_bank_manifest(
        scan.kind,
        tensors=tensors,
        files=files,
        parents=parents,
        activity=new_activity("ingest", _parameters(scan), message),
        config=scan.config if scan.kind == "base" else None,
        peft_config=scan.config if scan.kind == "adapter" else None,
        safetensors_metadata=metadata or None,
        metadata=source_layout({weight.path.name: weight.header.tensors for weight in scan.weights}),
    )


def _parameters(scan: FolderScan) -> dict[str, Any]:
    parameters: dict[str, Any] = {"source": scan.folder.resolve().name, "format": f"{scan.kind}-folder"}
    if scan.signed_by is not None:
        parameters["signature"] = scan.signed_by
    return parameters


def _check_storable(scan: FolderScan, parents: list[Parent], message: str) -> None:
    """The manifest ingest will store, with stand-in digests, must validate and encode."""
    stand_in = PREFIX + "0" * 64
    tensors = {
        name: TensorRecord(stand_in, entry.dtype, entry.shape, entry.nbytes)
        for weight in scan.weights
        for name, entry in weight.header.tensors.items()
    }
    files = {rel: FileRecord(stand_in, 0) for rel in scan.files}
    try:
        validate_manifest(_manifest(scan, tensors, files, parents, message), "the bank manifest")
    except SchemaError as exc:
        raise InputError(f"{scan.folder}: cannot be stored: {exc}") from None


def record_bank(
    store: Store, name: str, manifest: dict[str, Any], action: str, message: str, *, force_type: bool = False
) -> tuple[int, str, bool]:
    """Store `manifest` and record it as the next version of `name` — unless the head already
    has the same content (provenance aside): (version, digest, unchanged)."""
    head = store.refs.head(name)
    if head is not None and content_of(store.manifests.get(head.manifest)) == content_of(manifest):
        return head.version, head.manifest, True
    digest = store.manifests.put(manifest)
    entry = store.record(name, digest, action=action, message=message, force_type=force_type)
    return entry.version, digest, False


def _adapter_base(store: Store, base: str | None, scan: FolderScan) -> Bank:
    if base is None:
        raise InputError(f"{scan.folder}: an adapter needs --base REF naming the base bank it was trained on")
    bank = store.bank(base)
    if bank.type != "base":
        raise InputError(f"--base {base} is {with_article(bank.type)} bank; adapters are checked against a base bank")
    base_shapes = with_tied_head({name: record.shape for name, record in bank.tensors.items()}, bank.config or {})
    check_fits_base(scan.shapes(), base_shapes, scan.config, f"base {base}")
    return bank


def _store_contents(
    store: Store, scan: FolderScan, show_progress: bool, rehash: bool
) -> tuple[dict[str, TensorRecord], dict[str, FileRecord], list[PutResult]]:
    tensors: dict[str, TensorRecord] = {}
    files: dict[str, FileRecord] = {}
    results: list[PutResult] = []
    cache = store.hash_cache()
    try:
        with (
            byte_progress(scan.total_bytes(), f"ingest {scan.folder.name}", show_progress) as advance,
            store.backend.batch(),
            ThreadPoolExecutor(1, "weightbank-copy") as copier,
        ):
            for weight in scan.weights:
                remembered = None if (rehash or cache is None) else _remembered(store, cache, weight)
                identity = file_identity(weight.path)
                if remembered is None:
                    remembered = {}
                    for name, entry, data in tensor_ranges(weight):
                        result = store.objects.put_tensor(entry.dtype, entry.shape, data, copier)
                        results.append(result)
                        remembered[name] = result.digest
                        advance(entry.nbytes)
                    if cache is not None:
                        cache.remember(weight.path, identity, weight.header, remembered)
                else:
                    advance(sum(e.nbytes for e in weight.header.tensors.values()))
                for name, entry in weight.header.tensors.items():
                    tensors[name] = TensorRecord(remembered[name], entry.dtype, entry.shape, entry.nbytes)
            for rel, path in scan.files.items():
                content = path.read_bytes()
                result = store.objects.put(content)
                results.append(result)
                files[rel] = FileRecord(result.digest, len(content))
                advance(len(content))
    finally:
        if cache is not None:
            cache.close()
    return tensors, files, results


def _remembered(store: Store, cache: HashCache, weight: WeightFile) -> dict[str, str] | None:
    """Digests remembered for an unchanged file, if every object is still stored (and marked
    used, for gc) and holds the dtype and shape this run read from the file's header."""
    digests = cache.lookup(weight.path, weight.header)
    if digests is None:
        return None
    for name, entry in weight.header.tensors.items():
        digest = digests[name]
        if not is_digest(digest) or not store.objects.reuse(digest):
            return None
        try:
            stored = store.objects.tensor_entry(digest)
        except WeightbankError:
            return None
        if (stored.dtype, stored.shape) != (entry.dtype, entry.shape):
            return None
    return digests


def tensor_ranges(weight: WeightFile) -> Iterator[tuple[str, TensorEntry, FileRange]]:
    """Each tensor's byte range in its file, in file order."""
    with open(weight.path, "rb") as stream:
        for name, entry in sorted(weight.header.tensors.items(), key=lambda item: item[1].begin):
            yield name, entry, FileRange(stream.fileno(), weight.header.data_start + entry.begin, entry.nbytes)
