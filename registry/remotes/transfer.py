"""Moving banks between two stores: push (local → remote) and pull (remote → local).

1. The closure of the refs: their histories, manifests and objects (`closure`).
2. What the receiving side lacks, found in bulk: one listing per shard folder the closure
   touches (`objects/ab/`), asked afresh every time, never remembered from a previous run.
3. Objects, copied by `jobs` threads. Each is hashed as it arrives and published only if it
   matches its digest (`ObjectStore.add_verified`). Writes are grouped in the receiving
   backend's `batch()`: one Hub commit, or one local sync, per group of at most GROUP_FILES
   files and GROUP_BYTES bytes. Manifests go with the last group, after every object.
4. Signatures of those manifests that the receiving side lacks (create-only; only those that
   hold — a damaged or forged one stays behind, with a warning).
5. Ref entries last, create-only (see `history`), so a ref never names anything missing.

Under a trust policy (`pull --require-signed`), the closure's manifests and signatures are
checked before step 3: a pull that would name an untrusted bank writes nothing at all.

An interrupted transfer leaves complete objects (S3: each one; a folder or the Hub: each
finished group) and no partial ones; a re-run lists again and sends only the rest.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from ..digest import hex_of
from ..errors import ConflictError, InputError, IntegrityError, NotFoundError, RemoteError, WeightbankWarning
from ..manifests import MANIFESTS_DIR, manifest_path
from ..names import check_ref_name
from ..objects import OBJECTS_DIR
from ..progress import Advance, byte_progress
from ..refs import History, RefEntry, encode_entry, parse_ref
from ..signatures import VALID, SignatureCheck, check_signature
from ..store import Store
from ..trust import TrustPolicy, refusals, require
from . import closure, history

DEFAULT_JOBS = 8
CHUNK_BYTES = 8 << 20
GROUP_FILES = 100  # the Hub recommends commits of fewer than 100 files
GROUP_BYTES = 1 << 30
REF_ATTEMPTS = 5
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class TransferResult:
    """What a push or pull moved. `remote`: its name (or URL); `bytes` counts every payload
    byte sent: objects, manifests, signatures and ref entries; `present`: objects of the
    closure the receiving side already had; `signatures`: signatures attached on the receiving side."""

    remote: str
    objects: int
    object_bytes: int
    manifests: int
    refs: list[str]
    bytes: int
    present: int
    repaired: list[str] = field(default_factory=list)  # pull: damaged local objects replaced from the remote
    lazy: bool = False  # pull --lazy: objects were left on the remote
    signatures: int = 0


def read_chunks(stream: BinaryIO, advance: Advance) -> Iterator[bytes]:
    """The stream's bytes in CHUNK_BYTES pieces, reporting progress."""
    while chunk := stream.read(CHUNK_BYTES):
        advance(len(chunk))
        yield chunk


def copy_object(src: Store, dst: Store, digest: str, advance: Advance) -> int:
    """Copy one object, verified as it arrives (see `ObjectStore.add_verified`); its size."""
    with src.objects.open(digest) as stream:
        return dst.objects.add_verified(digest, read_chunks(stream, advance), source=src.url)


def missing(store: Store, top: str, digests: Iterable[str], pool: Executor) -> list[str]:
    """The digests `store` lacks under `top` (objects/ or manifests/), listing only the shard folders they fall in."""
    shards: dict[str, list[str]] = {}
    for digest in digests:
        shards.setdefault(hex_of(digest)[:2], []).append(digest)
    listings = pool.map(lambda shard: set(store.backend.list_dir(f"{top}/{shard}")), shards)
    found = zip(shards.values(), listings, strict=True)
    return sorted(digest for wanted, present in found for digest in wanted if hex_of(digest) not in present)


@contextmanager
def _failures_named(what: str) -> Iterator[None]:
    """I/O errors (s3fs, the filesystem) as one line that says which transfer failed."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise RemoteError(f"{what} failed: {exc.strerror or exc}{where}") from exc


def push(local: Store, remote: Store, refs: list[str], *, label: str, jobs: int, progress: bool) -> TransferResult:
    """Send `refs` (with their closure) from `local` to `remote`; see the module docstring."""
    with _failures_named(f"push to {label}"):
        return _push(local, remote, refs, label=label, jobs=jobs, progress=progress)


def pull(
    local: Store,
    remote: Store,
    refs: list[str],
    *,
    label: str,
    jobs: int,
    progress: bool,
    lazy: bool = False,
    rename: str | None = None,
    policy: TrustPolicy | None = None,
) -> TransferResult:
    """Fetch `refs` (with their closure) from `remote` into `local`; with `lazy`, everything
    but the objects (they are fetched when read, see `lazy`). Objects the local store already
    has are verified, and replaced from the remote if damaged. `rename`: import the one ref
    named under this local name (for histories that diverged). `policy`: refuse, before
    writing anything, if a new version or a digest pulled is not accepted (see `trust`)."""
    with _failures_named(f"pull from {label}"):
        return _pull(
            local, remote, refs, label=label, jobs=jobs, progress=progress, lazy=lazy, rename=rename, policy=policy
        )


def _push(local: Store, remote: Store, refs: list[str], *, label: str, jobs: int, progress: bool) -> TransferResult:
    need = closure.compute(local, refs)
    theirs = {name: remote.refs.entries(name) for name in need.histories}
    for name, ours in need.histories.items():
        history.unpublished(name, ours, theirs[name], label)  # a conflict fails before any byte moves
    with ThreadPoolExecutor(jobs) as pool:
        objects = missing(remote, OBJECTS_DIR, need.objects, pool)
        manifests = missing(remote, MANIFESTS_DIR, need.manifests, pool)
        sent = _copy(local, remote, need, objects, manifests, pool, f"push {label}", progress)
    signatures = _attach_signatures(remote, need)
    published = [e for name, ours in need.histories.items() for e in _publish(remote, name, ours, theirs[name], label)]
    present = len(need.objects) - len(objects)
    return _result(label, need, objects, sent, manifests, published, signatures, present=present)


def _pull(
    local: Store,
    remote: Store,
    refs: list[str],
    *,
    label: str,
    jobs: int,
    progress: bool,
    lazy: bool,
    rename: str | None,
    policy: TrustPolicy | None,
) -> TransferResult:
    need = closure.compute(remote, refs, have=local)
    if rename is not None:
        if len(need.histories) != 1:
            raise InputError("pull --as imports one ref: name exactly one ref NAME")
        ((_, theirs),) = need.histories.items()
        need.histories = {check_ref_name(rename): history.renamed(theirs, rename)}
    ours = {name: local.refs.entries(name) for name in need.histories}
    appends = {name: history.incoming(name, ours[name], theirs, label) for name, theirs in need.histories.items()}
    new = [entry for name, entries in appends.items() for entry in _live(History(name, ours[name] + entries), entries)]
    if policy is not None:
        digests = [remote.resolve(ref) for ref in refs if parse_ref(ref).name is None]
        _require_trusted(local, need, new, digests, policy, f"pull from {label}")
    with ThreadPoolExecutor(jobs) as pool:
        objects, repaired = ([], []) if lazy else _to_fetch(local, need.objects, pool)
        manifests = missing(local, MANIFESTS_DIR, need.manifests, pool)
        received = _copy(remote, local, need, objects, manifests, pool, f"pull {label}", progress)
    signatures = _attach_signatures(local, need)
    for entry in new:
        local.pin(entry.manifest)  # what the new versions name survives a gc running now
    added = [local.refs.append(entry) for entries in appends.values() for entry in entries]
    present = 0 if lazy else len(need.objects) - len(objects)
    return _result(
        label, need, objects, received, manifests, added, signatures, present=present, repaired=repaired, lazy=lazy
    )


def _live(history: History, entries: list[RefEntry]) -> list[RefEntry]:
    """Those of `entries` that are live in `history` (the versions a pull makes visible)."""
    live = {entry.version for entry in history.live()}
    return [entry for entry in entries if entry.version in live]


def _require_trusted(
    local: Store, need: closure.Closure, new: list[RefEntry], digests: list[str], policy: TrustPolicy, what: str
) -> None:
    """SignatureError unless `policy` accepts every new version and digest pulled, judged on
    the manifests and signatures the pull is about to bring in (and those already here)."""
    names: dict[str, list[str]] = {}
    for entry in new:
        names.setdefault(entry.manifest, []).append(entry.label)

    def document(digest: str) -> dict[str, Any]:
        return json.loads(need.manifests[digest]) if digest in need.manifests else local.manifests.get(digest)

    def checks(digest: str) -> list[SignatureCheck]:
        incoming = [check_signature(digest, s, data) for s, data in need.signatures.get(digest, {}).items()]
        return incoming + (local.signatures.checks(digest) if local.manifests.has(digest) else [])

    label = lambda digest: ", ".join(names.get(digest, []))  # noqa: E731
    require(refusals([*names, *digests], policy, document, checks, label), what)


def _attach_signatures(dst: Store, need: closure.Closure) -> list[int]:
    """Attach to `dst` the closure's signatures it lacks, all in one batch (one Hub commit),
    after the manifests and before any ref; only those that hold travel. Their sizes."""
    have = dst.signatures.attached(need.signatures)
    sizes = []
    with dst.backend.batch():
        for manifest, signatures in sorted(need.signatures.items()):
            for digest, data in sorted(signatures.items()):
                if digest in have.get(manifest, []):
                    continue
                check = check_signature(manifest, digest, data)
                if check.status != VALID:
                    problem = f"signature {digest} of manifest {manifest} not carried: {check.problem}"
                    warnings.warn(problem, WeightbankWarning, stacklevel=2)
                    continue
                dst.signatures.add(manifest, data)
                sizes.append(len(data))
    return sizes


def _to_fetch(local: Store, wanted: dict[str, int], pool: Executor) -> tuple[list[str], list[str]]:
    """(objects to fetch, of which damaged local copies): the missing ones, and those present
    whose bytes no longer match their digest. Present ones are marked used (see `gc`)."""
    absent = missing(local, OBJECTS_DIR, wanted, pool)
    present = [digest for digest in wanted if digest not in set(absent)]
    intact = pool.map(_intact_and_freshened(local), present)
    damaged = [digest for digest, ok in zip(present, intact, strict=True) if not ok]
    return sorted(absent + damaged), damaged


def _intact_and_freshened(store: Store) -> Callable[[str], bool]:
    def check(digest: str) -> bool:
        try:
            store.objects.verify(digest)
        except (IntegrityError, NotFoundError):
            return False
        return store.objects.reuse(digest)

    return check


def repair(local: Store, remote: Store, digests: list[str], *, label: str, jobs: int) -> list[str]:
    """Replace the objects `digests` (missing or damaged locally) from `remote`, each verified
    as it arrives; return those repaired (the remote may lack some)."""
    with _failures_named(f"repair from {label}"), ThreadPoolExecutor(jobs) as pool:
        available = set(digests) - set(missing(remote, OBJECTS_DIR, digests, pool))
        with local.backend.batch():
            _run_all(pool, lambda digest: copy_object(remote, local, digest, lambda _n: None), sorted(available))
    return sorted(available)


def _result(
    label: str,
    need: closure.Closure,
    objects: list[str],
    object_bytes: int,
    manifests: list[str],
    entries: list[RefEntry],
    signatures: list[int],
    **rest: Any,
) -> TransferResult:
    """What moved: the bytes of the objects copied, the manifests, the signatures and the ref entries."""
    sizes = sum(len(need.manifests[d]) for d in manifests) + sum(len(encode_entry(e)) for e in entries)
    return TransferResult(
        remote=label, objects=len(objects), object_bytes=object_bytes, manifests=len(manifests),
        refs=[f"{e.name}@v{e.version}" for e in entries], bytes=object_bytes + sizes + sum(signatures),
        signatures=len(signatures), **rest,
    )  # fmt: skip


def _copy(
    src: Store,
    dst: Store,
    need: closure.Closure,
    objects: list[str],
    manifests: list[str],
    pool: Executor,
    what: str,
    progress: bool,
) -> int:
    """Copy `objects` (verified on arrival), then `manifests`; return the object bytes copied."""
    lock = threading.Lock()
    copied = 0
    with byte_progress(sum(need.objects[d] for d in objects), what, progress) as bar:

        def advance(count: int) -> object:
            with lock:
                return bar(count)

        groups = _groups({digest: need.objects[digest] for digest in objects})
        for number, group in enumerate(groups, start=1):
            with dst.backend.batch():
                copied += sum(_run_all(pool, lambda digest: copy_object(src, dst, digest, advance), group))
                if number == len(groups):
                    for digest in manifests:
                        dst.backend.write_atomic(manifest_path(digest), [need.manifests[digest]])
    return copied


def _groups(objects: dict[str, int]) -> list[list[str]]:
    """Objects in groups of at most GROUP_FILES files and GROUP_BYTES bytes; one group at least
    (the manifests go with the last one)."""
    groups: list[list[str]] = [[]]
    size = 0
    for digest, nbytes in objects.items():
        if groups[-1] and (len(groups[-1]) >= GROUP_FILES or size + nbytes > GROUP_BYTES):
            groups.append([])
            size = 0
        groups[-1].append(digest)
        size += nbytes
    return groups


def _run_all(pool: Executor, function: Callable[[T], R], items: list[T]) -> list[R]:
    """`function` over `items` on the pool; on the first failure the rest are cancelled and
    the running ones waited for, so nothing still writes when the error propagates."""
    futures = [pool.submit(function, item) for item in items]
    try:
        return [future.result() for future in futures]
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise


def _publish(remote: Store, name: str, ours: list[RefEntry], theirs: list[RefEntry], label: str) -> list[RefEntry]:
    """Publish our versions of `name` that the remote lacks (`theirs`: its history as last
    read), create-only and in order; return those published. If another push takes a version
    first, the remote is read again: the same target is fine, another is a conflict (raised by
    `history.unpublished`)."""
    for _ in range(REF_ATTEMPTS):
        todo = history.unpublished(name, ours, theirs, label)
        if not todo:
            return []
        try:
            with remote.backend.batch():  # on the Hub: one commit, with parent_commit
                for entry in todo:
                    remote.refs.append(entry)
            return todo
        except (ConflictError, FileExistsError):
            theirs = remote.refs.entries(name)
    raise ConflictError(f"ref {name} on remote {label} kept changing during the push: run it again")
