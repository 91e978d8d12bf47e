"""The composer: composition manifests → runtime transformers models, tensor by tensor.

Data flows one way: manifest (`spec`) → plan (`plan`, operators in `operators/`) →
per-tensor tasks (`tasks`) → executor on the device (`executor`) → a model (`build`) or a
folder / bank (`write`). `verify` compares a composition with its oracle.
"""

from .analyze import analyze, count_parameters
from .api import compose, load_tokenizer, plan, save_model, verify_composition, write
from .expansion import ExpansionResult, expand, ingest_trained
from .plan import CompositionWarning, Plan, PlanError
from .planner import Candidate, candidates
from .prism import BridgedModel, PrismBridge, compose_bridged, load_bridge
from .scaffold_fuse import FuseResult
from .scaffold_fuse import fuse as fuse_scaffold
from .verify import VerifyReport
from .write import ComposeResult

__all__ = [
    "BridgedModel",
    "Candidate",
    "ComposeResult",
    "CompositionWarning",
    "ExpansionResult",
    "FuseResult",
    "Plan",
    "PlanError",
    "PrismBridge",
    "VerifyReport",
    "analyze",
    "candidates",
    "compose",
    "compose_bridged",
    "count_parameters",
    "expand",
    "fuse_scaffold",
    "ingest_trained",
    "load_bridge",
    "load_tokenizer",
    "plan",
    "save_model",
    "verify_composition",
    "write",
]
