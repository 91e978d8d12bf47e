"""`Registry`: the Python API, one method per CLI command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .audit import CheckReport, audit, fsck
from .checkpoints import DEFAULT_MAX_SHARD_SIZE
from .errors import InputError
from .export import ExportResult, export_bank
from .gc import DEFAULT_GRACE_SECONDS, GcReport, collect_garbage
from .ingest import IngestResult, ingest_folder
from .provenance import Lineage, build_lineage
from .refs import RefEntry
from .remotes import DEFAULT_JOBS, Remote, TransferResult, config, transfer
from .remotes.urls import open_remote
from .store import Store


class Registry:
    """A weight-bank registry over one store.

    Args:
        store: a folder, an fsspec URL (`memory://…`, `s3://bucket/prefix`) or a `Store`;
            defaults to `$WEIGHTBANK_HOME`, else `~/.cache/weightbank`.
        progress: show byte progress bars on stderr for long transfers.

    Example:
        >>> reg = Registry("memory://registry-doc")
        >>> reg.refs()
        []
    """

    def __init__(self, store: str | Path | Store | None = None, *, progress: bool = False) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        self.progress = progress

    def ingest(
        self, folder: str | Path, name: str, *, base: str | None = None, message: str = "", rehash: bool = False
    ) -> IngestResult:
        """Ingest a Hugging Face model folder, or a PEFT adapter folder (`base` required), as `name`.

        Unchanged weight files seen before are not re-read; `rehash=True` reads them anyway.
        """
        return ingest_folder(
            self.store, folder, name, base=base, message=message, show_progress=self.progress, rehash=rehash
        )

    def export(
        self, ref: str, out_dir: str | Path, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE
    ) -> ExportResult:
        """Write a base or adapter bank as a folder `from_pretrained` loads."""
        return export_bank(self.store, ref, out_dir, max_shard_size=max_shard_size, show_progress=self.progress)

    def resolve(self, ref: str) -> str:
        """The manifest digest `ref` names."""
        return self.store.resolve(ref)

    def show(self, ref: str) -> dict[str, Any]:
        """The manifest `ref` names, verified."""
        return self.store.manifests.get(self.store.resolve(ref))

    def log(self, name: str) -> list[RefEntry]:
        """Every version of ref `name`, oldest first."""
        return self.store.refs.history(name)

    def refs(self) -> list[RefEntry]:
        """The latest version of every ref, by name."""
        return [entry for name in self.store.refs.names() if (entry := self.store.refs.head(name)) is not None]

    def rollback(self, name: str, to: int, *, message: str = "") -> RefEntry:
        """Append a version of `name` that points where version `to` pointed. History is kept."""
        old = self.store.refs.get(name, to)
        return self.store.record(
            name, old.target, action="rollback", message=message or f"roll back to v{to}", rollback_to=to
        )

    def lineage(self, ref: str) -> Lineage:
        """The provenance DAG of `ref`."""
        return build_lineage(self.store, self.store.resolve(ref))

    def audit(self, ref: str) -> CheckReport:
        """Re-verify `ref`'s whole closure: schemas, object digests, parents."""
        return audit(self.store, ref)

    def fsck(self) -> CheckReport:
        """Verify every ref, manifest and object in the store."""
        return fsck(self.store)

    def gc(self, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> GcReport:
        """Remove objects and manifests no version of any ref reaches (older than the grace period)."""
        return collect_garbage(self.store, dry_run=dry_run, grace_seconds=grace_seconds)

    def remote_add(self, name: str, url: str) -> Remote:
        """Record remote `name` at `url`: `file://PATH`, `s3://BUCKET/PREFIX`, `hf://OWNER/REPO`
        or `hf://datasets/OWNER/REPO`. Nothing is contacted."""
        return config.add(self.store, name, url)

    def remote_ls(self) -> list[Remote]:
        """The remotes this store knows, by name."""
        return [remote for _name, remote in sorted(config.load(self.store).items())]

    def remote_rm(self, name: str) -> Remote:
        """Forget remote `name` (nothing on the remote changes)."""
        return config.remove(self.store, name)

    def push(self, remote: str, refs: list[str], *, jobs: int | None = None) -> TransferResult:
        """Send `refs` to a remote (a name, or a URL) with everything they need that it lacks:
        objects, then manifests, then ref versions (compare-and-swap; ConflictError if the
        remote has other versions: pull, then push again). `jobs`: objects moved at once (default 8).

        Example:
            >>> reg.push("origin", ["llama-1b", "my-lora"])      # doctest: +SKIP
        """
        target = config.find(self.store, remote)
        return transfer.push(
            self.store, open_remote(target.url), _some(refs), label=target.name or target.url,
            jobs=jobs or DEFAULT_JOBS, progress=self.progress,
        )  # fmt: skip

    def pull(self, remote: str, refs: list[str], *, lazy: bool = False, jobs: int | None = None) -> TransferResult:
        """Fetch `refs` from a remote (a name, or a URL) with everything they need that this store
        lacks, every object verified before it is stored. With `lazy`, objects stay on the remote
        and are fetched when something reads them (e.g. compose).

        Example:
            >>> reg.pull("origin", ["my-lora"], lazy=True)        # doctest: +SKIP
        """
        source = config.find(self.store, remote)
        if lazy:
            if not source.name:
                raise InputError(
                    "pull --lazy needs a named remote to fetch from later (weightbank remote add NAME URL)"
                )
            config.mark_lazy(self.store, source.name)
        return transfer.pull(
            self.store, open_remote(source.url), _some(refs), label=source.name or source.url,
            jobs=jobs or DEFAULT_JOBS, progress=self.progress, lazy=lazy,
        )  # fmt: skip


def _some(refs: list[str]) -> list[str]:
    if not refs:
        raise InputError("name at least one ref")
    return refs
