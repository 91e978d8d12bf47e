"""What `verify` compares against: models built by the peers (transformers, PEFT) from
banks exported to a scratch folder — never by the composer itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from weightbank.registry.export import export_bank
from weightbank.registry.store import Store

from .hf_model import config_object, model_class


@dataclass(frozen=True)
class Probe:
    """An input length at which `verify` measures what a step changes (its oracle against
    the model before it); `tolerance` None means the difference is reported, not judged."""

    step: str
    length: int
    label: str
    tolerance: float | None


class OracleContext:
    """Exports banks into a scratch folder for the peers to load."""

    def __init__(self, store: Store, scratch: Path, base: str | None = None) -> None:
        self.store = store
        self.scratch = scratch
        self.base = base  # digest of the composition's base bank, when there is one
        self._exported: dict[str, Path] = {}

    def export(self, ref: str) -> Path:
        """The bank as a from_pretrained / PeftModel.from_pretrained folder."""
        digest = self.store.resolve(ref)
        if digest not in self._exported:
            folder = self.scratch / digest.split(":", 1)[1][:16]
            export_bank(self.store, digest, folder)
            self._exported[digest] = folder
        return self._exported[digest]

    def load_model(self, ref: str) -> PreTrainedModel:
        """transformers' own `from_pretrained` of a base bank, in float32."""
        folder = self.export(ref)
        bank = self.store.bank(ref)
        assert bank.config is not None
        cls = model_class(config_object(bank.config))
        return cls.from_pretrained(folder, dtype=torch.float32).eval()
