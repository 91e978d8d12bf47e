"""Executing tasks: one target tensor at a time, on the device it will live on.

Sources are read through `safe_open` (memory-mapped) after their object's digest has been
verified; arithmetic runs in float32 on the target device; the result is cast to the
target dtype. Within one target, an intermediate used twice is computed once and dropped
after its last use; results that nobody else holds are updated in place, so a LoRA merge
holds about two copies of the weight at its peak. A task an operator defines for itself
computes itself: its `evaluate(inputs, executor)` gets its inputs in float32 (read-only).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors

from weightbank.registry.safetensors_format import CANONICAL_KEY
from weightbank.registry.store import Store

from .dtypes import to_torch
from .tasks import (
    F32,
    Add,
    Concat,
    Fill,
    IndexSelect,
    Load,
    LowRankUpdate,
    MatMul,
    Mean,
    Merge,
    Noise,
    Normalize,
    Scale,
    Slice,
    Target,
    Task,
    Transpose,
    walk,
)

# Row blocks of a LoRA merge are sized to keep their float32 temporaries about this big.
_BLOCK_BYTES = 8 << 20


class Executor:
    """Computes targets from a store's objects."""

    def __init__(self, store: Store, device: torch.device | str = "cpu") -> None:
        self.store = store
        self.device = torch.device(device)
        self._verified: dict[str, Future[None]] = {}
        self._verifier = ThreadPoolExecutor(1, "weightbank-verify")
        self.bytes_read = 0
        # Kept by operator-defined tasks for the whole run: values shared across targets and
        # the reports they collect (consolidate.prune's thresholds and per-tensor reports).
        self.notes: dict[str, Any] = {}

    def prefetch(self, targets: Iterable[Target]) -> None:
        """Verify the objects these targets read, in order, on a background thread, so that
        hashing overlaps with computing and placing the tensors before them."""
        objects = self.store.objects
        for target in targets:
            for task in walk(target.task):
                if isinstance(task, Load) and task.digest not in self._verified and objects.local_path(task.digest):
                    self._verified[task.digest] = self._verifier.submit(objects.verify, task.digest)

    def compute(self, target: Target, device: torch.device | str | None = None) -> torch.Tensor:
        """The target tensor, on `device` (default: the executor's), in the target dtype."""
        where = torch.device(device) if device is not None else self.device
        uses = Counter(child for task in walk(target.task) for child in task.inputs())
        dtype = to_torch(target.dtype)
        value, _owned = _Evaluation(self, where, uses).run(target.task, dtype)
        return value if value.dtype == dtype else value.to(dtype)

    def load(self, digest: str, device: torch.device) -> torch.Tensor:
        """A stored tensor on `device`, its object verified once per executor."""
        objects = self.store.objects
        local = objects.local_path(digest)
        if local is None:
            data = objects.read(digest)
            self.bytes_read += len(data)
            return load_safetensors(data)[CANONICAL_KEY].to(device)
        if digest not in self._verified:
            self._verified[digest] = self._verifier.submit(objects.verify, digest)
        self._verified[digest].result()
        self.bytes_read += objects.size(digest)
        with safe_open(local, framework="pt", device=str(device)) as source:
            return source.get_tensor(CANONICAL_KEY)


class _Evaluation:
    """One target's expression: values shared inside it are kept until their last use."""

    def __init__(self, executor: Executor, device: torch.device, uses: Counter[Task]) -> None:
        self.executor = executor
        self.device = device
        self.remaining = uses
        self.shared: dict[Task, torch.Tensor] = {}

    def run(self, task: Task, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, bool]:
        """(value, owned): owned values are referenced by nobody else and may be changed in place.
        `out_dtype` lets a task that can produce its result in that dtype directly do so."""
        if task in self.shared:
            value = self.shared[task]
            self.remaining[task] -= 1
            if self.remaining[task] == 0:
                del self.shared[task]
                return value, True
            return value, False
        value, owned = self._compute(task, out_dtype)
        if self.remaining[task] > 1:
            self.remaining[task] -= 1
            self.shared[task] = value
            return value, False
        return value, owned

    def _float(self, task: Task) -> tuple[torch.Tensor, bool]:
        value, owned = self.run(task)
        if value.dtype == torch.float32:
            return value, owned
        return value.float(), True

    def _compute(self, task: Task, out_dtype: torch.dtype | None) -> tuple[torch.Tensor, bool]:
        if isinstance(task, LowRankUpdate):
            return self._low_rank(task, out_dtype)
        if isinstance(task, IndexSelect):
            return self._select(task, out_dtype)
        if isinstance(task, Merge):
            values = [self.run(source)[0] for source in task.sources]
            return task.kernel(values, out_dtype or torch.float32, **dict(task.parameters)), True
        if isinstance(task, Load):
            # Loaded tensors are backed by the object's (copy-on-write) memory map: writing
            # into them would fault in a private copy page by page, so they are not "owned".
            return self.executor.load(task.digest, self.device), False
        if isinstance(task, Fill):
            return torch.full(task.shape, task.value, dtype=to_torch(task.dtype), device=self.device), True
        if isinstance(task, Noise):
            generator = torch.Generator().manual_seed(task.seed)
            return (torch.randn(task.shape, generator=generator) * task.std).to(self.device), True
        if isinstance(task, Slice):
            value, _ = self.run(task.src)
            return value.narrow(task.dim, task.start, task.stop - task.start), False
        if isinstance(task, Transpose):
            value, _ = self.run(task.src)
            return value.t(), False
        if isinstance(task, Concat):
            parts = [self.run(part)[0] for part in task.parts]
            if task.dtype == F32:
                parts = [part.float() for part in parts]
            return torch.cat(parts, dim=task.dim), True
        evaluate = getattr(task, "evaluate", None)
        if evaluate is not None:  # an operator-defined task: it computes itself from float32 inputs
            return evaluate([self._float(child)[0] for child in task.inputs()], self.executor), True
        return self._arithmetic(task)

    def _select(self, task: IndexSelect, out_dtype: torch.dtype | None) -> tuple[torch.Tensor, bool]:
        """Picked rows or columns; those with a factor other than 1 are multiplied in float32
        and rounded to the output dtype, the others are copied as they are (x · 1 is x)."""
        value, _ = self.run(task.src)
        picked, owned = _index_select(value, task.dim, task.index)
        if task.factors is None:
            return picked, owned
        dtype = out_dtype or torch.float32
        result = picked.to(dtype, copy=not owned)
        scaled = [position for position, factor in enumerate(task.factors) if factor != 1]
        if scaled:
            positions = torch.tensor(scaled, dtype=torch.long, device=value.device)
            shape = [1] * picked.dim()
            shape[task.dim] = -1
            factors = torch.tensor([task.factors[p] for p in scaled], dtype=torch.float32, device=value.device)
            products = picked.index_select(task.dim, positions).float().mul_(factors.reshape(shape))
            result.index_copy_(task.dim, positions, products.to(dtype))
        return result, True

    def _low_rank(self, task: LowRankUpdate, out_dtype: torch.dtype | None) -> tuple[torch.Tensor, bool]:
        """base + Σ factor·(b@a)[ᵀ], in blocks of rows: each block's deltas are computed in
        float32, scaled, added to the base rows and written into the output, whose dtype is
        the target's. The float32 block buffers are allocated once and reused, so a merge
        allocates (and page-faults) nothing but its output, whatever the weight's size."""
        base, base_owned = self.run(task.base)
        terms = [(self._float(t.b)[0], self._float(t.a)[0], t.factor, t.transpose) for t in task.terms]
        dtype = out_dtype or torch.float32
        reuse = base_owned and base.dtype == dtype and base.is_contiguous()
        out = base if reuse else torch.empty(task.shape, dtype=dtype, device=base.device)
        rows, cols = task.shape
        step = min(rows, max(1, _BLOCK_BYTES // max(1, cols * 4)))
        buffers = torch.empty((2, step * cols), dtype=torch.float32, device=base.device)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            block, scratch = (buffer[: (stop - start) * cols] for buffer in buffers)
            for number, (b, a, factor, transpose) in enumerate(terms):
                part = block if number == 0 else scratch
                if transpose:  # rows start:stop of (b @ a)ᵀ are columns start:stop of b @ a
                    part.view(stop - start, cols).copy_((b @ a[:, start:stop]).t())
                else:
                    torch.mm(b[start:stop], a, out=part.view(stop - start, cols))
                part.mul_(factor)
                if number:
                    block.add_(scratch)
            rows_view = block.view(stop - start, cols)
            rows_view.add_(scratch.view(stop - start, cols).copy_(base[start:stop]))
            out[start:stop] = rows_view
        return out, True

    def _arithmetic(self, task: Task) -> tuple[torch.Tensor, bool]:
        if isinstance(task, Add):
            a, a_owned = self.run(task.a)
            b, b_owned = self.run(task.b)
            # Add into whichever float32 operand nobody else holds, or into a fresh copy.
            if a_owned and a.dtype == torch.float32:
                return a.add_(b.float()), True
            if b_owned and b.dtype == torch.float32:
                return b.add_(a.float()), True
            return a.float().add_(b.float()) if a.dtype != torch.float32 else a + b.float(), True
        if isinstance(task, Scale):
            value, owned = self._float(task.src)
            return (value.mul_(task.factor) if owned else value * task.factor), True
        if isinstance(task, Mean):
            return self._float(task.src)[0].mean(task.dim, keepdim=True), True
        if isinstance(task, MatMul):
            return torch.matmul(self._float(task.a)[0], self._float(task.b)[0]), True
        if isinstance(task, Normalize):
            value, owned = self._float(task.src)
            magnitude, _ = self._float(task.magnitude)
            other = 1 - task.dim
            norm = torch.linalg.norm(value, dim=other)
            factor = (magnitude / norm).unsqueeze(other)
            return (value.mul_(factor) if owned else value * factor), True
        raise TypeError(f"no executor for {type(task).__name__}")


def _index_select(value: torch.Tensor, dim: int, index: tuple[int, ...]) -> tuple[torch.Tensor, bool]:
    """(`value.index_select(dim, index)`, owned). The leading run 0, 1, …, k-1 that growth
    operators keep is taken as one slice: gathering most of a matrix's columns one by one
    is several times slower than copying them as a block."""
    kept = next((position for position, i in enumerate(index) if position != i), len(index))
    if kept == len(index):
        return value.narrow(dim, 0, kept), False
    rest = value.index_select(dim, torch.tensor(index[kept:], dtype=torch.long, device=value.device))
    return (torch.cat([value.narrow(dim, 0, kept), rest], dim) if kept else rest), True


def peak_bytes_estimate(targets: Iterable[Target]) -> int:
    """Upper bound of what computing the hungriest single target holds at once: its sources,
    its float32 intermediates and its result."""
    peak = 0
    for target in targets:
        held = target.nbytes
        for task in walk(target.task):
            held += task.nbytes if isinstance(task, Load) else (task.nbytes * 4 // max(1, _itemsize(task)))
        peak = max(peak, held)
    return peak


def _itemsize(task: Task) -> int:
    return torch.empty((), dtype=to_torch(task.dtype)).element_size()
