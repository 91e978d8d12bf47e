"""Ingest: a Hugging Face model folder or a PEFT adapter folder → a bank.

The folder — local, or on the Hub, S3 or any fsspec filesystem, read through a `sources.Source`
— is scanned and validated completely (every safetensors header, the shard index, pickle-only
weights, an adapter's fit to its base) before anything is written, so bad input leaves the
store untouched, wherever it came from. Tensors are then streamed in file order (local files
as byte ranges the kernel copies, remote ones as range reads with several in flight), hashed,
and written as canonical tensor objects only if the store lacks them. Peak memory is about the
largest tensor locally, the reads in flight remotely.

A folder's `model.sig` (an OpenSSF model signature of the folder, not part of the model) is
never stored; under a trust policy it is verified before anything is written, and the
signer is recorded in the bank's provenance.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .banks import Bank, FileRecord, Parent, TensorRecord, content_of, new_bank_manifest
from .checkpoints import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BANK_MANIFEST,
    MODEL_CARD,
    MODEL_CONFIG,
    WEIGHTS,
    WEIGHTS_INDEX,
    source_layout,
)
from .digest import PREFIX, digest_bytes, is_digest, short
from .errors import InputError, SchemaError, WeightbankError
from .folder_signing import SIGNATURE_FILE, FolderSigner, verify_folder
from .hash_cache import HashCache, file_identity
from .json_input import parse_json_object
from .manifests import canonical_json, validate_manifest
from .model_card import card_bank
from .names import check_ref_name, check_relative_path
from .naming import with_article
from .objects import PutResult
from .peft_adapter import check_fits_base, check_lora_config, with_tied_head
from .progress import byte_progress
from .provenance import new_activity
from .safetensors_format import read_header
from .sources import Source, SourceFile, WeightFile, open_source
from .store import Store
from .trust import TrustPolicy

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Other serialisations of the same weights: never stored, listed as skipped.
FOREIGN_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".onnx", ".gguf", ".ot", ".tflite")


@dataclass(frozen=True)
class PublishedBank:
    """The manifest a folder published by weightbank carries (`weightbank.json`), validated."""

    digest: str
    document: dict[str, Any]


@dataclass
class FolderScan:
    """Everything ingest will read, validated, before anything is written."""

    kind: str  # "base" or "adapter"
    source: Source
    config: dict[str, Any]
    weights: list[WeightFile]
    files: dict[str, SourceFile]
    skipped: list[str] = field(default_factory=list)
    published: PublishedBank | None = None  # the folder is a bank weightbank published
    signed_by: dict[str, str] | None = None  # who signed the folder's model.sig, once verified

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: e.shape for w in self.weights for name, e in w.header.tensors.items()}

    def total_bytes(self) -> int:
        weights = sum(e.nbytes for w in self.weights for e in w.header.tensors.values())
        return weights + sum(file.size for file in self.files.values())


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
    """Validate a model or adapter folder (a path or URL, see `open_source`) and list what
    ingest will read."""
    return scan_source(open_source(folder))


def scan_source(source: Source) -> FolderScan:
    """Validate a model or adapter folder read through `source` and list what ingest will read."""
    top = source.top_level()
    kind, config_name = ("adapter", ADAPTER_CONFIG) if ADAPTER_CONFIG in top else ("base", MODEL_CONFIG)
    weight_names = _weight_files(source, top, kind)
    if config_name not in top:
        raise InputError(f"{source.label}: no {config_name}; a model folder needs its Hugging Face config")
    config = _read_json(source, config_name, "config")
    if kind == "adapter":
        check_lora_config(config, source.where(config_name))
    weights = [_read_weight_file(source, name) for name in weight_names]
    _check_unique_tensors(weights)
    if kind == "base" and WEIGHTS_INDEX in top:
        _check_index(source, weights)
    files, skipped = _other_files(source, set(weight_names) | {WEIGHTS_INDEX})
    published = _published_bank(source, files)
    if published is not None:
        for rel in _publishing_files(source, files, published):
            del files[rel]
            skipped.append(f"{rel} (written when {short(published.digest)} was published: recognised)")
    return FolderScan(kind, source, config, weights, files, skipped, published)


def _published_bank(source: Source, files: dict[str, SourceFile]) -> PublishedBank | None:
    """The bank manifest beside a published model card, if there is a valid one."""
    if BANK_MANIFEST not in files:
        return None
    try:
        document = parse_json_object(source.read(BANK_MANIFEST), source.where(BANK_MANIFEST), "bank manifest")
        validate_manifest(document, source.where(BANK_MANIFEST))
    except (InputError, SchemaError):
        return None  # someone else's file of that name: ingested as a plain file
    return PublishedBank(digest_bytes(canonical_json(document)), document)


def _publishing_files(source: Source, files: dict[str, SourceFile], published: PublishedBank) -> list[str]:
    """What publishing added to the bank's own files: the manifest, and the model card made for it."""
    added = [BANK_MANIFEST]
    if MODEL_CARD in files and card_bank(source.read(MODEL_CARD).decode("utf-8", "replace")) == published.digest:
        added.append(MODEL_CARD)
    return added


def _weight_files(source: Source, top: set[str], kind: str) -> list[str]:
    """Names of the top-level safetensors files that hold the weights."""
    safetensors = sorted(n for n in top if n.endswith(".safetensors"))
    if kind == "adapter":
        if ADAPTER_WEIGHTS in top:
            return [ADAPTER_WEIGHTS]
    elif WEIGHTS_INDEX in top:
        return sorted(set(_index_map(source).values()))
    elif WEIGHTS in top:
        return [WEIGHTS]
    elif len(safetensors) == 1:
        return safetensors
    elif safetensors:
        raise InputError(
            f"{source.label}: several safetensors files ({', '.join(safetensors)}) and no {WEIGHTS_INDEX} saying "
            "which hold the model"
        )
    pickles = sorted(n for n in top if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise InputError(
            f"{source.label}: weights are only in pickle files ({', '.join(pickles)}); weightbank never loads "
            "pickle — convert them to safetensors first (save_pretrained(..., safe_serialization=True) in an "
            "environment you trust)"
        )
    expected = ADAPTER_WEIGHTS if kind == "adapter" else f"{WEIGHTS} or {WEIGHTS_INDEX}"
    raise InputError(f"{source.label}: no weights found (expected {expected})")


def _read_json(source: Source, rel: str, what: str) -> dict[str, Any]:
    return parse_json_object(source.read(rel), source.where(rel), what)


def _index_map(source: Source) -> dict[str, str]:
    where = source.where(WEIGHTS_INDEX)
    weight_map = _read_json(source, WEIGHTS_INDEX, "shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise InputError(f"{where}: 'weight_map' must map tensor names to shard file names")
    for shard in set(weight_map.values()):
        check_relative_path(shard, where)
        if "/" in shard:
            raise InputError(f"{where}: shard {shard!r} is not in the model folder itself")
        if shard not in source.files():
            raise InputError(f"{where}: shard {shard!r} is missing")
    return weight_map


def _check_index(source: Source, weights: list[WeightFile]) -> None:
    weight_map = _index_map(source)
    for weight in weights:
        listed = {name for name, shard in weight_map.items() if shard == weight.rel}
        stored = set(weight.header.tensors)
        if listed != stored:
            missing, extra = sorted(listed - stored), sorted(stored - listed)
            detail = f"missing from the shard: {missing[:3]}" if missing else f"not in the index: {extra[:3]}"
            raise InputError(f"{source.where(WEIGHTS_INDEX)}: index and shard {weight.rel} disagree ({detail})")


def _read_weight_file(source: Source, rel: str) -> WeightFile:
    with source.open(rel) as stream:
        file = source.files()[rel]
        return WeightFile(rel, read_header(stream, file.size, source.where(rel)), file)


def _check_unique_tensors(weights: list[WeightFile]) -> None:
    seen: dict[str, str] = {}
    for weight in weights:
        for name in weight.header.tensors:
            if name in seen:
                raise InputError(f"tensor {name!r} is in both {seen[name]} and {weight.rel}")
            seen[name] = weight.rel


def _other_files(source: Source, weight_names: set[str]) -> tuple[dict[str, SourceFile], list[str]]:
    """Every other file by relative path, each checked by the source (see `sources.regular_file`);
    other weight formats are skipped."""
    files: dict[str, SourceFile] = {}
    skipped = list(source.skipped)
    for rel, file in source.files().items():
        if rel in weight_names:
            continue
        if rel == SIGNATURE_FILE:
            skipped.append(f"{rel} (the folder's signature; --require-signed checks it)")
            continue
        name = rel.rpartition("/")[2]
        other_weights = name.endswith(PICKLE_SUFFIXES + FOREIGN_WEIGHT_SUFFIXES)
        if other_weights or ("/" not in rel and name.endswith(".safetensors")):
            skipped.append(rel)
            continue
        check_relative_path(rel, source.label)
        source.check(rel)
        files[rel] = file
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
    """Ingest a model or adapter folder — a local path, or a URL: `hf://ORG/REPO[@REV][/PATH]`,
    `s3://BUCKET/PREFIX`, any fsspec URL (see `open_source`) — as the next version of ref `name`.

    Weight files already ingested and unchanged since are not re-read unless `rehash` is set:
    local files by identity (inode, size, mtime, ctime), remote ones by the sha256 the source
    vouches for (the Hub's LFS oid). A new version keeps the kind of bank `name` holds (a base
    stays a base) unless `force_type`. Provenance records the folder's name (not its path), or
    the repo id and the commit it resolved to. With a `policy`, the folder's `model.sig` must be
    signed by a key it trusts (local folders only).
    """
    check_ref_name(name)
    signer = _verified_signer(folder, policy) if policy is not None else None  # before a file is parsed
    scan = scan_folder(folder)
    scan.signed_by = signer.to_provenance() if signer is not None else None
    parents: list[Parent] = []
    if scan.kind == "adapter":
        base_bank = _adapter_base(store, base, scan)
        parents = [Parent(base_bank.digest, "base")]
    elif base is not None:
        raise InputError(f"{scan.source.label}: --base applies to adapter folders; this is a model folder")
    if scan.published is not None and store.manifests.has(scan.published.digest):
        parents.append(Parent(scan.published.digest, "source"))
    if not force_type:
        store.check_type(name, scan.kind)
    _check_storable(scan, parents, message)  # everything is checked before the first object is written

    tensors, files, created = _store_contents(store, scan, show_progress, rehash)
    manifest = _manifest(scan, tensors, files, parents, message)
    if _holds_the_published_bank(scan, manifest, parents):
        assert scan.published is not None
        manifest = scan.published.document  # a round trip: the very bank, its lineage included
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


def _holds_the_published_bank(scan: FolderScan, manifest: dict[str, Any], parents: list[Parent]) -> bool:
    """Whether the folder holds exactly the bank it was published from, which the store has:
    the same type, config, tensors and files (by digest)."""
    if scan.published is None or Parent(scan.published.digest, "source") not in parents:
        return False
    published = scan.published.document
    return all(published.get(key) == manifest.get(key) for key in ("type", "config", "peft_config", "tensors", "files"))


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
        metadata=source_layout({weight.rel: weight.header.tensors for weight in scan.weights}),
    )


def _parameters(scan: FolderScan) -> dict[str, Any]:
    """The ingest activity's parameters: where the folder came from (and what it was published from)."""
    parameters = {**scan.source.provenance(), "format": f"{scan.kind}-folder"}
    if scan.published is not None:
        parameters["published_bank"] = scan.published.digest
    if scan.signed_by is not None:
        parameters["signature"] = scan.signed_by
    return parameters


def _verified_signer(folder: str | Path, policy: TrustPolicy) -> FolderSigner:
    """The trusted signer of a local folder's `model.sig` (verified over the files on disk)."""
    text = str(folder)
    if "://" in text and not text.startswith("file://"):
        raise InputError(
            f"{text}: --require-signed verifies a local folder's model.sig; download the folder first (or pull "
            "a signed bank from a remote)"
        )
    return verify_folder(Path(text.removeprefix("file://")), policy)


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
        raise InputError(f"{scan.source.label}: cannot be stored: {exc}") from None


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
        raise InputError(f"{scan.source.label}: an adapter needs --base REF naming the base bank it was trained on")
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
    learned: list[tuple[WeightFile, str | None, dict[str, str]]] = []  # remembered once the objects are stored
    cache = store.hash_cache()
    try:
        with (
            byte_progress(scan.total_bytes(), f"ingest {scan.source.name}", show_progress) as advance,
            store.backend.batch(),
            ThreadPoolExecutor(1, "weightbank-copy") as copier,
        ):
            for weight in scan.weights:
                remembered = None if (rehash or cache is None) else _remembered(store, cache, weight)
                if remembered is None:
                    identity = file_identity(weight.file.path) if weight.file.path is not None else None
                    remembered = {}
                    for name, entry, data in scan.source.tensors(weight):
                        result = store.objects.put_tensor(entry.dtype, entry.shape, data, copier)
                        results.append(result)
                        remembered[name] = result.digest
                        advance(entry.nbytes)
                    learned.append((weight, identity, remembered))
                else:
                    advance(sum(e.nbytes for e in weight.header.tensors.values()))
                for name, entry in weight.header.tensors.items():
                    tensors[name] = TensorRecord(remembered[name], entry.dtype, entry.shape, entry.nbytes)
            for rel in scan.files:
                content = scan.source.read(rel)
                result = store.objects.put(content)
                results.append(result)
                files[rel] = FileRecord(result.digest, len(content))
                advance(len(content))
        if cache is not None:
            for weight, identity, digests in learned:
                _remember(cache, weight, identity, digests)
    finally:
        if cache is not None:
            cache.close()
    return tensors, files, results


def _remembered(store: Store, cache: HashCache, weight: WeightFile) -> dict[str, str] | None:
    """Digests remembered for the file — by the sha256 its source vouches for, else by a local
    file's identity — if every object is still stored (and marked used, for gc) and holds the
    dtype and shape this run read from the file's header."""
    if weight.file.sha256 is not None:
        digests = cache.lookup_sha256(weight.file.sha256, weight.header)
    elif weight.file.path is not None:
        digests = cache.lookup(weight.file.path, weight.header)
    else:
        return None
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


def _remember(cache: HashCache, weight: WeightFile, identity: str | None, digests: dict[str, str]) -> None:
    """Remember what a file just read holds: by its sha256 (checked against the bytes as they
    were read), else by the identity a local file had before it was read."""
    if weight.file.sha256 is not None:
        cache.remember_sha256(weight.file.sha256, weight.header, digests)
    elif weight.file.path is not None and identity is not None:
        cache.remember(weight.file.path, identity, weight.header, digests)
