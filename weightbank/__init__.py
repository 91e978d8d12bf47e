"""weightbank: a content-addressed registry of model weight banks and a composer.

The public API lives in the subpackages (`weightbank.registry`, `weightbank.composer`);
this module re-exports the names people reach for first, lazily, so that importing
`weightbank` (and running `weightbank --help`) never pulls in torch.

Example:
    >>> import weightbank
    >>> reg = weightbank.Registry("memory://doc-example")
    >>> reg.refs()
    []
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Registry": "weightbank.registry",
    "WeightbankError": "weightbank.registry",
    "compose": "weightbank.composer",
    "compose_bridged": "weightbank.composer",
    "load_bridge": "weightbank.composer",
    "plan": "weightbank.composer",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'weightbank' has no attribute {name!r}")
    return getattr(import_module(module), name)
