"""`Registry`: the Python API, one method per CLI command."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import trust
from .audit import CheckReport, audit, fsck
from .errors import InputError, NotFoundError
from .export import ExportResult, export_bank
from .gc import DEFAULT_GRACE_SECONDS, GcReport, collect_garbage
from .ingest import IngestResult, ingest_folder
from .names import check_ref_name
from .naming import close_names
from .provenance import Lineage, build_lineage
from .publish import PublishResult, publish_bank
from .refs import RefEntry, parse_ref
from .remotes import DEFAULT_JOBS, Remote, TransferResult, config, transfer
from .remotes.urls import open_remote
from .scaffold_add import ScaffoldResult, add_scaffold_seeds
from .scaffold_check import ScaffoldCheck, check_scaffold
from .scaffold_lifecycle import persist, prune
from .signing import Signer, SignResult, require_signed, sign, signers
from .store import Store
from .trust import TrustedKey, TrustPolicy


@dataclass(frozen=True)
class RollbackResult:
    """The version a rollback leaves at the head; `appended` is False when it already pointed there."""

    entry: RefEntry
    appended: bool


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
        self.store.progress = progress  # objects fetched on demand from lazy remotes show a bar too

    def ingest(
        self,
        folder: str | Path,
        name: str,
        *,
        base: str | None = None,
        message: str = "",
        rehash: bool = False,
        force_type: bool = False,
        policy: TrustPolicy | None = None,
    ) -> IngestResult:
        """Ingest a Hugging Face model folder, or a PEFT adapter folder (`base` required), as `name`:
        a local folder, or a URL — `hf://ORG/REPO[@REVISION][/PATH]`, `s3://BUCKET/PREFIX`, any
        fsspec URL — read by range reads, never copied to local disk first.

        Unchanged weight files seen before are not re-read; `rehash=True` reads them anyway. A new
        version keeps the bank type `name` holds unless `force_type` (a typo cannot turn a base
        into an adapter). `policy` (see `trust_policy`): the folder's OpenSSF `model.sig` must be
        signed by a trusted key (local folders); the signer is recorded in provenance.

        Example:
            >>> reg.ingest("hf://meta-llama/Llama-3.2-1B", "llama-1b")  # doctest: +SKIP
        """
        return ingest_folder(
            self.store, folder, name, base=base, message=message, show_progress=self.progress, rehash=rehash,
            force_type=force_type, policy=policy,
        )  # fmt: skip

    def export(
        self,
        ref: str,
        out: str | Path,
        *,
        max_shard_size: int | str | None = None,
        sign_key: str | Path | None = None,
        policy: TrustPolicy | None = None,
        revision: str | None = None,
        private: bool = False,
        create: bool = False,
        message: str = "",
    ) -> ExportResult | PublishResult:
        """Write a base or adapter bank as a folder `from_pretrained` loads: in the source
        checkpoint's own shards where it came from one, else as save_pretrained would shard it
        (unless `max_shard_size` is given). `sign_key` (ECDSA P-256 PEM): also write `model.sig`,
        the OpenSSF model-signing signature of the folder; `policy`: refuse a bank that is not
        signed by a trusted key.

        `out` is a local folder, or a URL the bank is published to with a model card and its
        manifest: `hf://ORG/REPO` (one commit on branch `revision`, default main; `create` the
        repo if missing, `private` to insist it is private; `message` for the commit) or
        `s3://BUCKET/PREFIX` (an empty prefix).

        Example:
            >>> reg.export("merged@v2", "hf://my-org/merged", create=True, private=True)  # doctest: +SKIP
        """
        text = str(out)
        if "://" in text and not text.startswith("file://"):
            if sign_key is not None:
                raise InputError(f"{text}: --sign writes model.sig into a local folder; export there, or push the bank")
            return publish_bank(
                self.store, ref, text, revision=revision, private=private, create=create, policy=policy,
                max_shard_size=max_shard_size, message=message, show_progress=self.progress,
            )  # fmt: skip
        if revision is not None or private or create:
            raise InputError(f"{out}: --revision, --private and --create apply to hf:// exports")
        return export_bank(
            self.store, ref, Path(text.removeprefix("file://")), max_shard_size=max_shard_size,
            show_progress=self.progress, sign_key=Path(sign_key) if sign_key is not None else None, policy=policy,
        )  # fmt: skip

    def resolve(self, ref: str) -> str:
        """The manifest digest `ref` names."""
        return self.store.resolve(ref)

    def show(self, ref: str) -> dict[str, Any]:
        """The manifest `ref` names, verified."""
        return self.store.manifests.get(self.store.resolve(ref))

    def log(self, name: str) -> list[RefEntry]:
        """Every entry of ref `name` (versions and tombstones), oldest first."""
        if not self.store.refs.versions(check_ref_name(name)):
            raise NotFoundError(f"no ref named {name!r}" + close_names(name, self.store.refs.names()))
        return self.store.refs.history(name).entries

    def refs(self) -> list[RefEntry]:
        """What every ref resolves to (its newest live version), by name; removed refs are left out."""
        return [entry for name in self.store.refs.names() if (entry := self.store.refs.head(name)) is not None]

    def rollback(self, name: str, to: int, *, message: str = "") -> RollbackResult:
        """Append a version of `name` that points where version `to` pointed. History is kept;
        nothing is appended if `name` already points there."""
        history = self.store.refs.history(name)
        old = history.resolve(to)
        head = history.head()
        if head is not None and head.target == old.target:
            return RollbackResult(head, appended=False)
        entry = self.store.record(
            name, old.manifest, action="rollback", message=message or f"roll back to v{to}", rollback_to=to,
            force_type=True,  # restoring history, whatever the ref held since
        )  # fmt: skip
        return RollbackResult(entry, appended=True)

    def rm(self, ref: str, *, purge: bool = False, message: str = "") -> RefEntry:
        """Remove `NAME` (every version) or `NAME@vN` by appending a tombstone to its history.
        Removed versions stop resolving; `gc` may collect what only they reached once the
        tombstone is older than its grace period. `purge` (whole refs): gc then deletes the
        history too, and the name is free again."""
        spec = parse_ref(ref)
        if spec.name is None:
            raise InputError(f"rm takes a ref name (NAME or NAME@vN), not a digest: {ref}")
        if purge and spec.version is not None:
            raise InputError(f"--purge removes a whole ref: give {spec.name}, not {ref}")
        versions = None if spec.version is None else [spec.version]
        return self.store.remove(spec.name, versions, purge=purge, message=message)

    def add_scaffold(
        self,
        name: str,
        *,
        host: str,
        seeds: Mapping[str, Any],
        kind: str = "delta",
        alpha: float | Mapping[str, Any] = 1.0,
        message: str = "",
        **options: Any,
    ) -> ScaffoldResult:
        """Record live seeds grafted onto base bank `host` as the next version of scaffold bank `name`.

        `seeds` maps each slot (a linear layer's module path in the host) to a torch module or
        a mapping of its state-dict tensors, or to a `SeedSpec` with its own kind/alpha/options.
        `kind`: delta, blend, lora, input, output, router or mlp; `alpha`: a constant or a
        schedule `{"alpha0", "alpha1", "shape": linear|cosine|sigmoid, "steps", "at"}`;
        `options` (for the seeds whose kind takes them): lora `lora_alpha`, `use_rslora`; router
        `gates`; mlp `activation`.
        Seeds whose slot or shapes do not fit the host are refused, naming the slot.

        Example:
            >>> reg.add_scaffold("seed-7", host="tiny@v1", kind="delta",     # doctest: +SKIP
            ...     seeds={"model.layers.0.self_attn.q_proj": torch.nn.Linear(64, 64)},
            ...     alpha={"alpha0": 0.0, "alpha1": 1.0, "shape": "cosine", "steps": 1000, "at": 250})
        """
        return add_scaffold_seeds(
            self.store, name, host=host, seeds=seeds, kind=kind, alpha=alpha, message=message, **options
        )

    def check_scaffold(self, ref: str) -> ScaffoldCheck:
        """Per seed of scaffold `ref`: whether it folds into its host (and why not), its alpha, its bytes."""
        return check_scaffold(self.store, ref)

    def prune_scaffold(self, name: str, *, message: str = "") -> RefEntry:
        """Record that scaffold `name`'s seeds are dropped (the host is unchanged)."""
        return prune(self.store, name, message=message)

    def persist_scaffold(self, name: str, *, message: str = "") -> RefEntry:
        """Record that scaffold `name`'s seeds stay runtime modules (compose them with scaffold.attach)."""
        return persist(self.store, name, message=message)

    def lineage(self, ref: str) -> Lineage:
        """The provenance DAG of `ref`."""
        return build_lineage(self.store, self.store.resolve(ref))

    def audit(self, ref: str, *, policy: TrustPolicy | None = None) -> CheckReport:
        """Re-verify `ref`'s whole closure: schemas, object digests, parents, signatures; with a
        `policy`, every manifest in it must be signed by a trusted key."""
        return audit(self.store, ref, show_progress=self.progress, policy=policy)

    def sign(self, ref: str, key: str | Path) -> SignResult:
        """Sign the manifest `ref` names with the private key in the PEM file `key` (ECDSA
        P-256 or Ed25519); nothing is written if this key has already signed it.

        Example:
            >>> reg.sign("llama-1b@v1", "release.pem")            # doctest: +SKIP
        """
        return sign(self.store, ref, Path(key))

    def signers(self, ref: str) -> list[Signer]:
        """Every signature attached to the manifest `ref` names, checked, oldest first."""
        return signers(self.store, self.store.resolve(ref))

    def trust_add(self, name: str, public_key: str | Path) -> TrustedKey:
        """Trust the public key in the PEM file `public_key` under `name` (this store's trust list)."""
        return trust.add(self.store, name, Path(public_key))

    def trust_ls(self) -> list[TrustedKey]:
        """The keys this store trusts, by name."""
        return [key for _name, key in sorted(trust.load(self.store).items())]

    def trust_rm(self, name: str) -> TrustedKey:
        """Stop trusting the key named `name`."""
        return trust.remove(self.store, name)

    def trust_policy(self, trusted_keys: list[str | Path] | tuple[str | Path, ...] = ()) -> TrustPolicy:
        """The trust list plus `trusted_keys` (public key PEM files), for `policy=` arguments;
        InputError if that is no key at all."""
        return trust.policy(self.store, [Path(path) for path in trusted_keys])

    def require_signed(self, refs: list[str], policy: TrustPolicy, what: str = "") -> None:
        """SignatureError unless `policy` accepts every bank `refs` name and their closures."""
        require_signed(self.store, [self.store.resolve(ref) for ref in refs], policy, what or ", ".join(refs))

    def fsck(self) -> CheckReport:
        """Verify every ref, manifest and object in the store."""
        return fsck(self.store, show_progress=self.progress)

    def gc(
        self,
        *,
        dry_run: bool = False,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        keep_last: int | None = None,
        refs: list[str] | None = None,
    ) -> GcReport:
        """Remove objects and manifests no live version of any ref reaches (older than the grace
        period). `keep_last`: first remove all but the N newest versions of `refs` (default all)."""
        return collect_garbage(self.store, dry_run=dry_run, grace_seconds=grace_seconds, keep_last=keep_last, refs=refs)

    def repair(self, remote: str, digests: list[str], *, jobs: int | None = None) -> list[str]:
        """Fetch objects that are missing or damaged here (e.g. `fsck().bad_objects`) again
        from a remote, verified; return those repaired."""
        source = config.find(self.store, remote)
        return transfer.repair(
            self.store, open_remote(source.url), digests, label=source.name or source.url, jobs=jobs or DEFAULT_JOBS
        )

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

    def pull(
        self,
        remote: str,
        refs: list[str],
        *,
        lazy: bool = False,
        jobs: int | None = None,
        rename: str | None = None,
        policy: TrustPolicy | None = None,
    ) -> TransferResult:
        """Fetch `refs` from a remote (a name, or a URL) with everything they need that this store
        lacks, every object verified before it is stored; objects already here are verified too
        and replaced if damaged. With `lazy`, objects stay on the remote and are fetched when
        something reads them (e.g. compose). Local versions are never rewritten: if a ref's
        histories diverged, ConflictError; `rename` imports the one ref under another name.
        `policy`: SignatureError, and nothing written, if a version pulled is not signed by a
        trusted key (see `trust_policy`).

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
            jobs=jobs or DEFAULT_JOBS, progress=self.progress, lazy=lazy, rename=rename, policy=policy,
        )  # fmt: skip


def _some(refs: list[str]) -> list[str]:
    if not refs:
        raise InputError("name at least one ref")
    return refs
