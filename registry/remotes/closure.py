"""What a set of refs needs on the other side of a transfer.

`NAME` carries every version of NAME (a store never holds a version without the ones before
it), `NAME@vN` the versions up to N, and `blake3:…` one manifest without any ref. Every
manifest brings its parents, transitively, and every bank manifest its objects. Object sizes
come from the manifests (a tensor object is a canonical header plus the tensor's bytes), so
computing a closure reads no object.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..banks import Bank
from ..errors import NotFoundError
from ..manifests import canonical_json
from ..provenance import parents_of
from ..refs import RefEntry, parse_ref
from ..safetensors_format import canonical_header
from ..store import Store


@dataclass
class Closure:
    """Ref histories (oldest first), manifests (canonical bytes, verified) and objects (sizes)."""

    histories: dict[str, list[RefEntry]] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)


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
        versions = [e for e in source.refs.entries(spec.name) if spec.version is None or e.version <= spec.version]
        if not versions or (spec.version is not None and versions[-1].version != spec.version):
            raise NotFoundError(f"no ref {ref} in {source.url}")
        if len(versions) > len(closure.histories.get(spec.name, [])):
            closure.histories[spec.name] = versions
        pending.extend(entry.target for entry in versions)
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
    return closure
