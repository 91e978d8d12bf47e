"""The composer: composition manifests → runtime transformers models, tensor by tensor.

Data flows one way: manifest (`spec`) → plan (`plan`, operators in `operators/`) →
per-tensor tasks (`tasks`) → executor on the device (`executor`) → a model (`build`) or a
folder / bank (`write`). `verify` compares a composition with its oracle.
"""

from .api import compose, load_tokenizer, plan, save_model, verify_composition, write
from .plan import Plan, PlanError
from .verify import VerifyReport
from .write import ComposeResult

__all__ = [
    "ComposeResult",
    "Plan",
    "PlanError",
    "VerifyReport",
    "compose",
    "load_tokenizer",
    "plan",
    "save_model",
    "verify_composition",
    "write",
]
