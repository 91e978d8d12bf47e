"""Taps: where in a transformers model a bridge reads or writes the hidden state.

- `embeddings`: the input embeddings (what `inputs_embeds` means for that model).
- `layer.N`: the residual stream after decoder layer N (0-based) — the input of layer N+1,
  or of the final norm after the last layer.
- `final`: the final hidden state, after the final norm (what the LM head reads); a source
  tap only.

Reading runs the model only up to the tap (a forward hook stops it there). Writing runs the
model from the tap on: `inputs_embeds` for `embeddings`; for `layer.N`, a forward pre-hook on
the next module replaces its input while layers 0..N are skipped for that call.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from weightbank.registry.errors import InputError

from ..architectures import Layout

EMBEDDINGS, FINAL = "embeddings", "final"


@dataclass(frozen=True)
class Tap:
    """A place in a model's stack: `layer` is None for `embeddings` and `final`."""

    name: str
    layer: int | None = None

    def __str__(self) -> str:
        return self.name


def tap_named(text: str, role: str) -> Tap:
    """A tap by name alone (`embeddings`, `final`, `layer.N` or `N`), not checked against a model."""
    match = re.fullmatch(r"(?:layer\.)?(-?\d+)", text.strip())
    if match:
        return Tap(f"layer.{int(match[1])}", int(match[1]))
    if text == EMBEDDINGS or (text == FINAL and role == "source"):
        return Tap(text)
    if text == FINAL:
        raise InputError(
            "--target-tap final: running a model from its final hidden state is only its LM head, not a bridge "
            "into the model; use embeddings or layer.N"
        )
    raise InputError(
        f"--{role}-tap {text!r}: taps are embeddings, layer.N" + (" and final" if role == "source" else "")
    )


def parse_tap(text: str, config: dict[str, Any], role: str, model: str) -> Tap:
    """A tap by name, checked to exist in the model of `config`. `role` is `source` (A, read)
    or `target` (B, written)."""
    tap = tap_named(text, role)
    layers = Layout(config).value("layers")
    if tap.layer is not None and not 0 <= tap.layer < layers:
        known = f"embeddings, layer.0..layer.{layers - 1}" + (", final" if role == "source" else "")
        raise InputError(f"--{role}-tap {text}: {model} has no such tap (it has {layers} layers; taps: {known})")
    return tap


def _layers(model: PreTrainedModel) -> nn.ModuleList:
    prefix = Layout(model.config.to_dict()).layer_prefix(0).removesuffix(".0.")
    layers = model.get_submodule(prefix)
    assert isinstance(layers, nn.ModuleList)
    return layers


def _final_norm(model: PreTrainedModel) -> nn.Module:
    return model.get_submodule(Layout(model.config.to_dict()).module("final_norm"))


def _output_of(tap: Tap, model: PreTrainedModel) -> nn.Module:
    """The module whose output is the hidden state at `tap`."""
    if tap.name == EMBEDDINGS:
        return model.get_input_embeddings()
    if tap.name == FINAL:
        return _final_norm(model)
    assert tap.layer is not None
    return _layers(model)[tap.layer]


class _TapReached(Exception):
    """Raised by the capture hook to stop the forward pass at the tap."""


@torch.no_grad()
def run_to_tap(model: PreTrainedModel, tap: Tap, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state at `tap` [batch, seq, hidden]; nothing after the tap is computed."""
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, _args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _TapReached

    handle = _output_of(tap, model).register_forward_hook(capture)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _TapReached:
        pass
    finally:
        handle.remove()
    if not captured:
        raise InputError(f"the forward pass never reached tap {tap}")
    return captured[0]


class _Skipped(nn.Module):
    """Stands in for a decoder layer whose output the bridge replaces: passes its input on."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@contextmanager
def _written_at(model: PreTrainedModel, tap: Tap, hidden: torch.Tensor) -> Iterator[None]:
    """While inside: layers 0..N are skipped and the next module's input is `hidden`."""
    assert tap.layer is not None
    layers = _layers(model)
    following = layers[tap.layer + 1] if tap.layer + 1 < len(layers) else _final_norm(model)

    def replace(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    originals = [layers[i] for i in range(tap.layer + 1)]
    handle = following.register_forward_pre_hook(replace, with_kwargs=True)
    try:
        for i in range(tap.layer + 1):
            layers[i] = _Skipped()
        yield
    finally:
        handle.remove()
        for i, layer in enumerate(originals):
            layers[i] = layer


@torch.no_grad()
def run_from_tap(model: PreTrainedModel, tap: Tap, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """Run `model` from `tap` on, with `hidden` [batch, seq, hidden] as the state there;
    returns the model's output (`.logits`)."""
    embeddings = next(model.get_input_embeddings().parameters())
    hidden = hidden.to(embeddings.device, embeddings.dtype)
    if tap.name == EMBEDDINGS:
        return model(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
    with _written_at(model, tap, hidden):
        return model(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False)
