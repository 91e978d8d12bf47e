"""Task expressions: how one target tensor is computed from source tensors.

A plan maps every target tensor name to a small, immutable expression tree. Equal
expressions are equal values (frozen dataclasses), so a tensor used by several targets is
recognised and computed once. Shapes and dtypes are known when a task is built, so every
shape problem is found at plan time, before a byte is read.

Arithmetic (`Add`, `Scale`, `Mean`, `MatMul`, `LowRankUpdate`, `Normalize`, `Merge`) is done in
float32; structural tasks (`Slice`, `Transpose`, `Concat`, `IndexSelect` without factors) keep their
input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from weightbank.registry.safetensors_format import DTYPE_SIZES

F32 = "F32"


class ShapeError(ValueError):
    """A task was built from inputs whose shapes do not fit together."""


@dataclass(frozen=True)
class Task:
    """Base class: every task knows the shape and dtype of what it produces."""

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> str:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]

    def inputs(self) -> tuple[Task, ...]:
        return ()


@dataclass(frozen=True)
class Load(Task):
    """A stored tensor object."""

    digest: str
    source_dtype: str
    source_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source_shape

    @property
    def dtype(self) -> str:
        return self.source_dtype


@dataclass(frozen=True)
class Fill(Task):
    """A tensor of one value (zeros for new writer rows, √s for new norm gains)."""

    fill_shape: tuple[int, ...]
    value: float = 0.0
    fill_dtype: str = F32

    @property
    def shape(self) -> tuple[int, ...]:
        return self.fill_shape

    @property
    def dtype(self) -> str:
        return self.fill_dtype


@dataclass(frozen=True)
class Noise(Task):
    """Seeded Gaussian noise N(0, std²), float32, generated on the CPU so every device gets
    the same values."""

    noise_shape: tuple[int, ...]
    std: float
    seed: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.noise_shape

    @property
    def dtype(self) -> str:
        return F32


@dataclass(frozen=True)
class Slice(Task):
    """`src[start:stop]` along `dim`."""

    src: Task
    dim: int
    start: int
    stop: int

    def __post_init__(self) -> None:
        if not (0 <= self.dim < len(self.src.shape) and 0 <= self.start <= self.stop <= self.src.shape[self.dim]):
            raise ShapeError(f"cannot slice [{self.start}:{self.stop}] of dim {self.dim} from {list(self.src.shape)}")

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.src.shape)
        shape[self.dim] = self.stop - self.start
        return tuple(shape)

    @property
    def dtype(self) -> str:
        return self.src.dtype

    def inputs(self) -> tuple[Task, ...]:
        return (self.src,)


@dataclass(frozen=True)
class Transpose(Task):
    """`src.T` of a matrix: a seed in nn.Linear's (out, in) layout meeting a Conv1D's (in, out)."""

    src: Task

    def __post_init__(self) -> None:
        if len(self.src.shape) != 2:
            raise ShapeError(f"cannot transpose {list(self.src.shape)}: not a matrix")

    @property
    def shape(self) -> tuple[int, ...]:
        rows, cols = self.src.shape
        return (cols, rows)

    @property
    def dtype(self) -> str:
        return self.src.dtype

    def inputs(self) -> tuple[Task, ...]:
        return (self.src,)


@dataclass(frozen=True)
class IndexSelect(Task):
    """`src.index_select(dim, index)`: rows or columns picked (and repeated) by index, each
    multiplied by its entry of `factors` when given (Net2Net's split writer columns)."""

    src: Task
    dim: int
    index: tuple[int, ...]
    factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        size = self.src.shape[self.dim] if 0 <= self.dim < len(self.src.shape) else 0
        if self.index and not (min(self.index) >= 0 and max(self.index) < size):
            raise ShapeError(f"index out of range for dim {self.dim} of {list(self.src.shape)}")
        if self.factors is not None and len(self.factors) != len(self.index):
            raise ShapeError("one factor per selected index is needed")

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.src.shape)
        shape[self.dim] = len(self.index)
        return tuple(shape)

    @property
    def dtype(self) -> str:
        return self.src.dtype if self.factors is None else F32

    @cached_property
    def leading_run(self) -> int:
        """k for the longest prefix 0, 1, …, k-1 of `index` (what growth operators keep in place)."""
        return next((position for position, i in enumerate(self.index) if position != i), len(self.index))

    def inputs(self) -> tuple[Task, ...]:
        return (self.src,)


def select(src: Task, dim: int, index: tuple[int, ...], factors: tuple[float, ...] | None = None) -> Task:
    """`IndexSelect(src, dim, index, factors)`, or the `Fill` it equals when `src` is one: lines
    picked from a constant are that constant, and zeros scaled by non-negative factors stay zeros
    (a new identity block widened by Net2Net: nothing to gather)."""
    selected = IndexSelect(src, dim, index, factors)
    if isinstance(src, Fill) and (factors is None or (src.value == 0 and all(f >= 0 for f in factors))):
        return Fill(selected.shape, src.value, selected.dtype)
    return selected


@dataclass(frozen=True)
class Concat(Task):
    parts: tuple[Task, ...]
    dim: int

    def __post_init__(self) -> None:
        first = self.parts[0].shape
        for part in self.parts[1:]:
            other = part.shape
            if len(other) != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(first, other, strict=True)) if i != self.dim
            ):
                raise ShapeError(f"cannot concatenate {list(first)} and {list(other)} along dim {self.dim}")

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.parts[0].shape)
        shape[self.dim] = sum(p.shape[self.dim] for p in self.parts)
        return tuple(shape)

    @property
    def dtype(self) -> str:
        dtypes = {p.dtype for p in self.parts}
        return dtypes.pop() if len(dtypes) == 1 else F32

    def inputs(self) -> tuple[Task, ...]:
        return self.parts


class _Arithmetic(Task):
    """Computed in float32, shaped like its first input."""

    @property
    def shape(self) -> tuple[int, ...]:
        return self.inputs()[0].shape

    @property
    def dtype(self) -> str:
        return F32


@dataclass(frozen=True)
class Add(_Arithmetic):
    a: Task
    b: Task

    def __post_init__(self) -> None:
        if self.a.shape != self.b.shape:
            raise ShapeError(f"cannot add {list(self.a.shape)} and {list(self.b.shape)}")

    def inputs(self) -> tuple[Task, ...]:
        return (self.a, self.b)


@dataclass(frozen=True)
class Scale(_Arithmetic):
    """`src * factor`."""

    src: Task
    factor: float

    def inputs(self) -> tuple[Task, ...]:
        return (self.src,)


@dataclass(frozen=True)
class Mean(_Arithmetic):
    """`src.mean(dim, keepdim=True)`: the mean of every line along `dim` (mean padding)."""

    src: Task
    dim: int

    def __post_init__(self) -> None:
        if not 0 <= self.dim < len(self.src.shape):
            raise ShapeError(f"no dim {self.dim} in {list(self.src.shape)}")

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.src.shape)
        shape[self.dim] = 1
        return tuple(shape)

    def inputs(self) -> tuple[Task, ...]:
        return (self.src,)


@dataclass(frozen=True)
class MatMul(_Arithmetic):
    """`a @ b` for a matrix and a vector (either side): a seed's bias terms such as W·c."""

    a: Task
    b: Task

    def __post_init__(self) -> None:
        a, b = self.a.shape, self.b.shape
        fits = (len(a), len(b)) in ((2, 1), (1, 2)) and a[-1] == b[0]
        if not fits:
            raise ShapeError(f"cannot multiply {list(a)} by {list(b)}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.a.shape[0],) if len(self.a.shape) == 2 else (self.b.shape[1],)

    def inputs(self) -> tuple[Task, ...]:
        return (self.a, self.b)


@dataclass(frozen=True)
class LowRankTerm:
    """One low-rank (or any product) delta: `factor · (b @ a)`, transposed when `transpose` is
    set — a LoRA's B·A, or a scaffold seed's W·L / L·W."""

    b: Task
    a: Task
    factor: float
    transpose: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        rows, cols = self.b.shape[0], self.a.shape[1]
        return (cols, rows) if self.transpose else (rows, cols)


@dataclass(frozen=True)
class LowRankUpdate(_Arithmetic):
    """`base + Σ factorᵢ · (bᵢ @ aᵢ)[ᵀ]`: merged LoRA deltas. The executor computes it in row
    blocks straight into the output, so no full-size float32 temporary is ever made."""

    base: Task
    terms: tuple[LowRankTerm, ...]

    def __post_init__(self) -> None:
        for term in self.terms:
            if len(term.b.shape) != 2 or len(term.a.shape) != 2 or term.b.shape[1] != term.a.shape[0]:
                raise ShapeError(f"cannot multiply {list(term.b.shape)} by {list(term.a.shape)}")
            if term.shape != self.base.shape:
                raise ShapeError(f"ΔW is {list(term.shape)} but the weight is {list(self.base.shape)}")

    def inputs(self) -> tuple[Task, ...]:
        return (self.base, *(t for term in self.terms for t in (term.b, term.a)))


@dataclass(frozen=True)
class Normalize(_Arithmetic):
    """DoRA's fold: `src * (magnitude / ‖src‖)`, norms taken across the axis other than `dim`,
    one per index of `dim` (the output features)."""

    src: Task
    magnitude: Task
    dim: int

    def __post_init__(self) -> None:
        if len(self.src.shape) != 2 or self.magnitude.shape != (self.src.shape[self.dim],):
            raise ShapeError(f"magnitude {list(self.magnitude.shape)} does not fit {list(self.src.shape)}")

    def inputs(self) -> tuple[Task, ...]:
        return (self.src, self.magnitude)


@dataclass(frozen=True)
class Merge(_Arithmetic):
    """A merge method over same-shaped tensors: `kernel(values, out_dtype, **parameters)`.

    The kernel (a module-level function of a `merge.*` operator) gets the sources as they are
    (memory-mapped, in their stored dtype; it must not change them), works in float32 chunk by
    chunk and returns the result in `out_dtype`, rounded once. `parameters` are this tensor's
    resolved values, as hashable (name, value) pairs.
    """

    kernel: Callable[..., Any]
    sources: tuple[Task, ...]
    parameters: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        shapes = {s.shape for s in self.sources}
        if len(shapes) != 1:
            raise ShapeError(f"cannot merge tensors of shapes {', '.join(str(list(s)) for s in sorted(shapes))}")

    def inputs(self) -> tuple[Task, ...]:
        return self.sources


@dataclass(frozen=True)
class Target:
    """A target tensor: its task and the dtype it is stored in."""

    task: Task
    dtype: str
    shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", self.task.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def walk(task: Task) -> list[Task]:
    """Every distinct task in an expression, inputs before users."""
    order: list[Task] = []
    seen: set[Task] = set()

    def visit(node: Task) -> None:
        if node in seen:
            return
        seen.add(node)
        for child in node.inputs():
            visit(child)
        order.append(node)

    visit(task)
    return order
