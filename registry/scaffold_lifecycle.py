"""What becomes of a scaffold's seeds: fused into the host, pruned, or persisted as runtime
modules. Each decision is a new version of the scaffold ref — a manifest with the same seeds,
the decision in its `fold`, the previous version as its `source` parent — appended with the
decision as its action and message, so `log` and `lineage` show it. History is never
rewritten: earlier versions stay readable, and `rollback` is how a decision is taken back.
Fusing itself (folding and registering the host version) is the composer's:
`weightbank.composer.scaffold_fuse`.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import InputError
from .provenance import new_activity
from .refs import RefEntry, parse_ref
from .scaffolds import DECISIONS, HOST_ROLE, ScaffoldView
from .store import Store

_DEFAULT_MESSAGES = {
    "prune": "pruned: the seeds are dropped, the host is unchanged",
    "persist": "persisted: the seeds stay separate modules at run time (scaffold.attach)",
}


def undecided(store: Store, name: str) -> ScaffoldView:
    """The latest version of scaffold `name`, refused if a decision was already taken on it."""
    spec = parse_ref(name)
    if spec.name is None or spec.version is not None:
        raise InputError(f"{name}: decisions apply to the latest version of a named scaffold; give its name only")
    view = ScaffoldView(store.bank(name), name)
    decision = view.decision
    if decision is not None:
        head = store.refs.head(name)
        assert head is not None
        raise InputError(
            f"{name} was already {DECISIONS[decision['action']]} ({name}@v{head.version}); decisions are final — "
            f"roll back (weightbank rollback {name} --to N) to decide again"
        )
    return view


def record_decision(
    store: Store, name: str, action: str, *, message: str = "", outcome: dict[str, Any] | None = None
) -> RefEntry:
    """Append `action` (fuse, prune, persist) to scaffold `name`'s history. `outcome`: what
    the decision produced (a fuse's result bank), kept in the decision record."""
    view = undecided(store, name)
    document = copy.deepcopy(view.bank.document)
    document["fold"]["decision"] = {"action": action, **(outcome or {})}
    document["provenance"] = {
        "parents": [{"digest": view.host, "role": HOST_ROLE}, {"digest": view.bank.digest, "role": "source"}],
        "activity": new_activity(f"scaffold.{action}", {"scaffold": view.bank.digest, **(outcome or {})}, message),
    }
    digest = store.manifests.put(document)
    return store.record(name, digest, action=action, message=message or _DEFAULT_MESSAGES.get(action, ""))


def prune(store: Store, name: str, *, message: str = "") -> RefEntry:
    """Drop the seeds of scaffold `name`: the host stays as it is; the scaffold stays readable."""
    return record_decision(store, name, "prune", message=message)


def persist(store: Store, name: str, *, message: str = "") -> RefEntry:
    """Keep the seeds of scaffold `name` as separate modules at run time (`scaffold.attach`)."""
    return record_decision(store, name, "persist", message=message)
