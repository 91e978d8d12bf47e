"""What a set of refs needs on the other side of a transfer.

`NAME` carries every entry of NAME's history (a store never holds a version without the
ones before it), `NAME@vN` the entries up to N, and `blake3:…` one manifest without any ref.
The manifests carried are those of the versions live in what is carried (a removed
version's entry travels, its data does not); every manifest brings its parents,
transitively, its signatures, and every bank manifest its objects. Object sizes
come from the manifests (a tensor object is a canonical header plus the tensor's bytes), so
computing a closure reads no object (signatures are read: they are small, and a pull under
a trust policy checks them before anything is written).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..banks import Bank
from ..errors import NotFoundError
from ..manifests import canonical_json
from ..provenance import parents_of
from ..refs import History, RefEntry, parse_ref
from ..safetensors_format import canonical_header
from ..store import Store


@dataclass
class Closure:
    """Ref histories (oldest first), manifests (canonical bytes, verified), objects (sizes)
    and the signatures attached to the manifests in `source` (manifest → digest → bytes, as stored)."""

    histories: dict[str, list[RefEntry]] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    signatures: dict[str, dict[str, bytes]] = field(default_factory=dict)


def compute(source: Store, refs: Iterable[str], *, have: Store | None = None) -> Closure:
    """The closure of `refs` in `source`. Manifests that `have` holds are read there instead
    (same digest, same document): a pull does not download what the local store has."""
    closure = Closure()
    pending: list[str] = []
    for ref in refs:
        spec = parse_ref(ref)
        if spec.name is None:
            pending.append(source.resolve(ref))
            continue
        if not source.refs.versions(spec.name):
            raise NotFoundError(f"no ref {ref} in {source.url}")
        try:
            history = source.refs.history(spec.name)
            if spec.version is not None:
                history.resolve(spec.version)
        except NotFoundError as exc:
            raise NotFoundError(f"{exc} (in {source.url})") from None
        carried = [e for e in history.entries if spec.version is None or e.version <= spec.version]
        if len(carried) > len(closure.histories.get(spec.name, [])):
            closure.histories[spec.name] = carried
        pending.extend(entry.manifest for entry in History(spec.name, carried).live())
    while pending:
        digest = pending.pop()
        if digest in closure.manifests:
            continue
        reader = have if have is not None and have.manifests.has(digest) else source
        document = reader.manifests.get(digest)
        closure.manifests[digest] = canonical_json(document)
        if document["kind"] == "bank":
            bank = Bank(digest, document)
            for tensor in bank.tensors.values():
                closure.objects[tensor.digest] = len(canonical_header(tensor.dtype, tensor.shape)) + tensor.bytes
            for file in bank.files.values():
                closure.objects[file.digest] = file.bytes
        pending.extend(parent["digest"] for parent in parents_of(document))
    for manifest, signatures in source.signatures.attached(closure.manifests).items():
        closure.signatures[manifest] = {digest: source.signatures.read(manifest, digest) for digest in signatures}
    return closure
