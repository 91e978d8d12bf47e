"""Publish: a base or adapter bank → a Hub model repo, or a folder in a bucket, that
`from_pretrained` / `PeftModel.from_pretrained` loads straight from where it lands.

What lands is what `export` writes to a local folder — the files byte for byte, the weights in
the source checkpoint's own shards (else as save_pretrained shards them), the shard index — plus
a generated model card (`README.md`, see `model_card`) and the bank's manifest
(`weightbank.json`), so that a later `ingest` of the repo recognises the bank.

Shards are written one at a time into a temporary folder, each object verified as it is
copied, handed to the target while the next shard is written, and removed once sent: at most
two shards are ever on local disk, never the whole model. The target (`remotes.targets`)
makes it all visible at once — on the Hub one commit of pre-uploaded LFS/Xet files — or, on
an object store, in an order that leaves nothing loadable until everything is there.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .banks import Bank, TensorRecord
from .checkpoints import BANK_MANIFEST, MODEL_CARD, WEIGHTS_INDEX, index_bytes
from .export import exportable_bank, shard_metadata, weight_shards, write_safetensors
from .model_card import model_card
from .progress import Advance, byte_progress
from .safetensors_format import SafetensorsHeader, read_header
from .store import Store
from .trust import TrustPolicy


class PublishTarget(Protocol):
    """Where a published folder goes (`remotes.targets.open_target`)."""

    url: str  # the folder, as messages name it

    @property
    def repo_id(self) -> str | None:
        """The Hub repo, for the model card (None elsewhere)."""
        ...

    def add_file(self, rel: str, path: Path) -> str | None:
        """Send a staged weight file (removed once this returns); its sha256 where the target
        names files by it (the Hub's LFS oid), else None."""
        ...

    def add_bytes(self, rel: str, data: bytes) -> None:
        """Send a small file."""
        ...

    def finish(self, message: str) -> str:
        """Make everything sent visible; where it landed (on the Hub: `hf://ORG/REPO@COMMIT`)."""
        ...

    def abort(self) -> None:
        """Undo what was sent, after a failure (nothing of it is visible yet on the Hub)."""
        ...


@dataclass(frozen=True)
class PublishResult:
    """What a publish wrote: `url` names where it landed (a Hub URL names the commit)."""

    url: str
    bank_type: str
    weight_files: list[str]
    files: int
    bytes: int


def publish_bank(
    store: Store,
    ref: str,
    url: str,
    *,
    revision: str | None = None,
    private: bool = False,
    create: bool = False,
    policy: TrustPolicy | None = None,
    max_shard_size: int | str | None = None,
    message: str = "",
    show_progress: bool = False,
) -> PublishResult:
    """Publish the bank `ref` names to `url` (see the module docstring and `remotes.targets`);
    the bank is checked (and, with `policy`, its signatures) before the target is contacted."""
    from .remotes.targets import open_target

    bank = exportable_bank(store, ref, policy)
    target = open_target(url, revision=revision, private=private, create=create)
    shards = weight_shards(bank, max_shard_size)
    files = {rel: record for rel, record in bank.files.items() if rel not in (MODEL_CARD, BANK_MANIFEST)}
    total = bank.tensor_bytes + sum(record.bytes for record in files.values())
    index = index_bytes(shards, bank.tensor_bytes, bank.parameters)
    learned: list[tuple[str, SafetensorsHeader, dict[str, str]]] = []  # what each sent shard's sha256 holds
    with byte_progress(total, f"publish {ref}", show_progress) as advance:
        try:
            for rel, record in files.items():
                target.add_bytes(rel, store.objects.read(record.digest))
                advance(record.bytes)
            _send_shards(store, bank, shards, target, learned, advance)
            if index is not None:
                target.add_bytes(WEIGHTS_INDEX, index)
            target.add_bytes(MODEL_CARD, model_card(store, bank, ref, target.repo_id).encode())
            target.add_bytes(BANK_MANIFEST, store.manifests.read_bytes(bank.digest))
            where = target.finish(message or f"weightbank: publish {ref}")
        except BaseException:
            target.abort()
            raise
    _remember(store, learned)
    weight_files = [*shards, *([WEIGHTS_INDEX] if index is not None else [])]
    return PublishResult(where, bank.type, weight_files, len(files) + 2, total)  # + the card and the manifest


def _send_shards(
    store: Store,
    bank: Bank,
    shards: dict[str, list[str]],
    target: PublishTarget,
    learned: list[tuple[str, SafetensorsHeader, dict[str, str]]],
    advance: Advance,
) -> None:
    """Write each shard into a temporary folder and send it while the next one is written."""
    tensors, metadata = bank.tensors, shard_metadata(bank)
    with tempfile.TemporaryDirectory(prefix="weightbank-publish-") as staging, ThreadPoolExecutor(1) as uploader:
        sending: tuple[Future[str | None], Path, dict[str, TensorRecord]] | None = None
        for filename, names in shards.items():
            path, records = Path(staging) / filename, {name: tensors[name] for name in names}
            write_safetensors(store, records, path, metadata)
            sent = uploader.submit(target.add_file, filename, path)
            if sending is not None:
                _settle(*sending, learned, advance)
            sending = (sent, path, records)
        if sending is not None:
            _settle(*sending, learned, advance)


def _settle(
    sent: Future[str | None],
    path: Path,
    records: dict[str, TensorRecord],
    learned: list[tuple[str, SafetensorsHeader, dict[str, str]]],
    advance: Advance,
) -> None:
    """Wait for a shard to be sent, note what a file with its sha256 holds, then remove it."""
    sha256 = sent.result()
    if sha256 is not None:
        with open(path, "rb") as stream:
            header = read_header(stream, path.stat().st_size, str(path))
        learned.append((sha256, header, {name: record.digest for name, record in records.items()}))
    advance(sum(record.bytes for record in records.values()))
    path.unlink()


def _remember(store: Store, learned: list[tuple[str, SafetensorsHeader, dict[str, str]]]) -> None:
    """Once published: remember each shard by its sha256, so an ingest of the repo reads no tensor."""
    cache = store.hash_cache()
    if cache is None:
        return
    try:
        for sha256, header, digests in learned:
            cache.remember_sha256(sha256, header, digests)
    finally:
        cache.close()
