"""PRISM bridges: a least-squares affine map z = W·x + b from model A's hidden space (at a
tap) to model B's, stored as a tile grid in a `prism` bank, and run between two composed
models. See docs/prism.md.

- `fit` / `refit` (with `ActivationFiles` or `PairedText` as the source of pairs) make banks;
- `load_bridge` gives the stored map as a module, `compose_bridged` the bridged pipeline;
- `evaluate` reports R² and next-token losses on a text.
"""

from .evaluate import EvalReport, evaluate
from .fit import FitResult, SideRecord, fit
from .grid import TileGrid, choose_grid
from .paired_text import PairedText, open_side, read_lines
from .pairs import ActivationFiles
from .refit import RefitResult, refit
from .runtime import BridgedModel, PrismBridge, compose_bridged, load_bridge
from .taps import Tap, parse_tap

__all__ = [
    "ActivationFiles",
    "BridgedModel",
    "EvalReport",
    "FitResult",
    "PairedText",
    "PrismBridge",
    "RefitResult",
    "SideRecord",
    "Tap",
    "TileGrid",
    "choose_grid",
    "compose_bridged",
    "evaluate",
    "fit",
    "load_bridge",
    "open_side",
    "parse_tap",
    "read_lines",
    "refit",
]
