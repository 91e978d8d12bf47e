"""A tied input embedding and output head, as an adapter step changes them.

transformers builds a tied model's output head from its input embedding: one tensor. An
adapter changes the pair in three ways, with PEFT's semantics:
- a base-layer tensor (saved with embedding layers) replaces the shared tensor;
- a `modules_to_save` copy replaces one module's tensor only: PEFT gives that module its own
  copy, so the pair is untied and the other module keeps the original weight;
- a LoRA delta on either module changes only that module while the adapter is unmerged (as
  it was trained), but merged into the shared tensor it moves both — what PEFT's
  `merge_and_unload` does, with a warning.
An `ensure_weight_tying` adapter ties the head's LoRA factors to the embedding's: one delta
that both modules see, unmerged. PEFT's merge adds it once through each module, so twice.

`TiedPair` collects what a step does to the pair and resolves it either as PEFT's merge does
(the default) or as the unmerged adapter computes (`untie`), the exact alternative.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from weightbank.registry.errors import InputError

from .architectures import Layout
from .model_state import ModelState
from .tasks import LowRankTerm, LowRankUpdate, Task


@dataclass
class TiedPair:
    """The embedding and head weight names, the tensor they share, each module's own copy and
    LoRA terms, and the terms both modules see (`mirrored`, from ensure_weight_tying)."""

    embed: str
    head: str
    tie_key: str  # the config key that ties them
    shared: Task
    own: dict[str, Task] = field(default_factory=dict)
    terms: dict[str, list[LowRankTerm]] = field(default_factory=dict)
    mirrored: list[LowRankTerm] = field(default_factory=list)

    @property
    def names(self) -> tuple[str, str]:
        return self.embed, self.head

    def trained(self) -> dict[str, Task]:
        """What the unmerged adapter computes: each module its own tensor and its own deltas."""
        return {
            name: _updated(self.own.get(name, self.shared), [*self.terms.get(name, []), *self.mirrored])
            for name in self.names
        }

    def merged(self) -> dict[str, Task]:
        """What merging into the shared tensor gives (PEFT's merge_and_unload, with the mirrored
        delta counted once): every delta lands in the shared tensor; own copies stay apart."""
        every = [term for name in self.names if name not in self.own for term in self.terms.get(name, [])]
        shared = _updated(self.shared, [*every, *self.mirrored])
        return {name: _updated(self.own[name], self.terms.get(name, [])) if name in self.own else shared
                for name in self.names}  # fmt: skip

    def moved_by_merge(self) -> list[str]:
        """Modules whose merged tensor differs from the trained one (a partner's delta moved it)."""
        trained, merged = self.trained(), self.merged()
        return [name for name in self.names if trained[name] != merged[name]]


def tied_pair(state: ModelState) -> TiedPair | None:
    """The state's tied embedding/head pair; None when the head is not tied (or the family is
    one weightbank has no table for)."""
    try:
        layout = Layout(state.config)
    except InputError:
        return None
    names = layout.tied_head
    if names is None or names[1] not in state.tensors:
        return None
    head, embed = names
    return TiedPair(embed, head, layout.key("tied"), state.tensors[embed])


def _updated(task: Task, terms: list[LowRankTerm]) -> Task:
    return LowRankUpdate(task, tuple(terms)) if terms else task
