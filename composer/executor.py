"""Executing tasks: one target tensor at a time, on the device it will live on.

Sources are memory-mapped and verified from that mapping (`object_maps`), ahead of use on a
helper thread (`prefetch`); arithmetic runs in float32 on the target device and is rounded
once to the target dtype. A target that is a new tensor on the CPU is written straight into
a buffer whose pages were faulted in ahead (`pages`), and the executor's own kernels — LoRA
merges (`low_rank`), row and column selections, casts — run in row blocks spread over the
cores (`row_blocks`). Within one target, an intermediate used twice is computed once and
dropped after its last use; results that nobody else holds are updated in place. A task an
operator defines for itself computes itself: its `evaluate(inputs, executor)` gets its inputs
in float32 (read-only).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from safetensors.torch import load as load_safetensors

from weightbank.registry.errors import NotFoundError
from weightbank.registry.safetensors_format import CANONICAL_KEY
from weightbank.registry.store import Store

from .dtypes import to_torch
from .lookahead import Lookahead
from .low_rank import low_rank_update
from .object_maps import map_verified
from .pages import fresh_tensor
from .row_blocks import for_row_blocks, one_intra_op_thread, rows_per_block
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

# At most this many bytes of objects mapped, and of fresh buffers made, ahead of their use.
_MAPPED_AHEAD = 1 << 30
_FRESH_AHEAD = 512 << 20
ObjectKey = str
BufferKey = tuple[tuple[int, ...], torch.dtype]


class Executor:
    """Computes targets from a store's objects. `exact_peft`: LoRA merges follow PEFT's own
    arithmetic, bit for bit, instead of one fused pass (see `low_rank`)."""

    def __init__(self, store: Store, device: torch.device | str = "cpu", exact_peft: bool = False) -> None:
        self.store = store
        self.device = torch.device(device)
        self.exact_peft = exact_peft
        self.bytes_read = 0
        self._mapped: Lookahead[ObjectKey, torch.Tensor] = Lookahead(self._map, _MAPPED_AHEAD, "weightbank-map")
        self._fresh: Lookahead[BufferKey, torch.Tensor] = Lookahead(_fresh, _FRESH_AHEAD, "weightbank-pages")
        # Kept by operator-defined tasks for the whole run: values shared across targets and
        # the reports they collect (consolidate.prune's thresholds and per-tensor reports).
        self.notes: dict[str, Any] = {}

    def prefetch(self, targets: Iterable[Target], ahead: int | None = None, fresh: bool = True) -> None:
        """Get ready what these targets will need, in the order they will be computed, on
        helper threads: their objects mapped and verified, and (`fresh`, on the CPU) the
        buffers of the new tensors with their pages faulted in — at most `ahead` bytes of
        each not yet taken (default: 1 GiB of objects, 512 MiB of buffers; one value is
        always allowed). Each target must then be computed once, in this order, for the
        work to be used."""
        if ahead is not None:
            self._mapped.budget = self._fresh.budget = ahead
        objects = self.store.objects
        for target in targets:
            for task in walk(target.task):
                if isinstance(task, Load) and objects.local_path(task.digest):
                    self._mapped.schedule(task.digest, task.nbytes)
            if fresh and self.device.type == "cpu" and _fills_buffer(target):
                self._fresh.schedule((target.shape, to_torch(target.dtype)), target.nbytes)

    def compute(self, target: Target, device: torch.device | str | None = None) -> torch.Tensor:
        """The target tensor, on `device` (default: the executor's), in the target dtype."""
        where = torch.device(device) if device is not None else self.device
        uses = Counter(child for task in walk(target.task) for child in task.inputs())
        dtype = to_torch(target.dtype)
        out = self._fresh.take((target.shape, dtype)) if where.type == "cpu" and _fills_buffer(target) else None
        value, _owned = _Evaluation(self, where, uses).run(target.task, dtype, out)
        if value.dtype == dtype:
            return value
        if out is None:
            out = torch.empty(target.shape, dtype=dtype, device=where)
        copy_rows(out, value)
        return out

    def load(self, digest: str, device: torch.device) -> torch.Tensor:
        """A stored tensor on `device`: a local object is mapped and verified (hashed once per
        process); others are read and verified."""
        objects = self.store.objects
        if objects.local_path(digest) is None:
            data = objects.read(digest)
            self.bytes_read += len(data)
            return load_safetensors(data)[CANONICAL_KEY].to(device)
        tensor = self._mapped.take(digest)
        self.bytes_read += tensor.nbytes
        return tensor if device.type == "cpu" else tensor.to(device)  # factors and weights go up as stored

    def _map(self, digest: str) -> torch.Tensor:
        path = self.store.objects.local_path(digest)
        if path is None:  # prefetch and load map local objects only
            raise NotFoundError(f"object {digest} is not a local file")
        return map_verified(path, digest)


def _fresh(key: BufferKey) -> torch.Tensor:
    shape, dtype = key
    return fresh_tensor(shape, dtype)


def _fills_buffer(target: Target) -> bool:
    """Whether computing the target writes a new tensor of the target's dtype (then into a
    buffer made ahead), rather than handing on a stored tensor or a result made otherwise."""
    task = target.task
    if isinstance(task, (LowRankUpdate, Concat, Fill)):
        return True
    if isinstance(task, IndexSelect):
        return task.factors is not None or task.leading_run < len(task.index)
    if isinstance(task, Merge):  # its kernel rounds into the target dtype itself
        return False
    return task.dtype != target.dtype  # a cast at the end


def copy_rows(out: torch.Tensor, value: torch.Tensor) -> None:
    """`out.copy_(value)` (casting), in row blocks over the cores."""
    if out.dim() < 2:
        out.copy_(value)
        return
    rows = out.shape[0]
    step = rows_per_block(rows, out[0].numel() * 4)

    def lines(start: int, stop: int) -> None:
        out[start:stop].copy_(value[start:stop])

    for_row_blocks(rows, step, lines, out.device)


class _Evaluation:
    """One target's expression: values shared inside it are kept until their last use."""

    def __init__(self, executor: Executor, device: torch.device, uses: Counter[Task]) -> None:
        self.executor = executor
        self.device = device
        self.remaining = uses
        self.shared: dict[Task, torch.Tensor] = {}

    def run(
        self, task: Task, out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, bool]:
        """(value, owned): owned values are referenced by nobody else and may be changed in place.
        `out_dtype` lets a task that can produce its result in that dtype directly do so; `out`
        (the target's buffer, for its root task) is where a task that writes a new tensor writes it."""
        if task in self.shared:
            value = self.shared[task]
            self.remaining[task] -= 1
            if self.remaining[task] == 0:
                del self.shared[task]
                return value, True
            return value, False
        value, owned = self._compute(task, out_dtype, out)
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

    def _compute(
        self, task: Task, out_dtype: torch.dtype | None, out: torch.Tensor | None
    ) -> tuple[torch.Tensor, bool]:
        if isinstance(task, LowRankUpdate):
            return self._low_rank(task, out_dtype, out)
        if isinstance(task, IndexSelect):
            return self._select(task, out_dtype, out)
        if isinstance(task, Merge):
            values = [self.run(source)[0] for source in task.sources]
            return task.kernel(values, out_dtype or torch.float32, **dict(task.parameters)), True
        if isinstance(task, Load):
            # Loaded tensors are backed by the object's (copy-on-write) memory map: writing
            # into them would fault in a private copy page by page, so they are not "owned".
            return self.executor.load(task.digest, self.device), False
        if isinstance(task, Fill):
            dtype = to_torch(task.dtype)
            if out is None:
                return torch.full(task.shape, task.value, dtype=dtype, device=self.device), True
            return out.fill_(torch.tensor(task.value, dtype=dtype).item()), True  # rounded to the task's dtype first
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
            if out is None:
                return torch.cat(parts, dim=task.dim), True
            return torch.cat(parts, dim=task.dim, out=out), True
        evaluate = getattr(task, "evaluate", None)
        if evaluate is not None:  # an operator-defined task: it computes itself from float32 inputs
            return evaluate([self._float(child)[0] for child in task.inputs()], self.executor), True
        return self._arithmetic(task)

    def _select(
        self, task: IndexSelect, out_dtype: torch.dtype | None, out: torch.Tensor | None
    ) -> tuple[torch.Tensor, bool]:
        """Picked rows or columns, copied as they are (a leading run 0, 1, …, k-1 as one block);
        those with a factor other than 1 are then multiplied in float32 and rounded to the
        output dtype (x · 1 is x). Without factors the result keeps the source's dtype."""
        value, _ = self.run(task.src)
        kept = task.leading_run
        if task.factors is None and kept == len(task.index):
            return value.narrow(task.dim, 0, kept), False
        if out is None:
            dtype = value.dtype if task.factors is None else (out_dtype or torch.float32)
            out = torch.empty(task.shape, dtype=dtype, device=value.device)
        gather(out, value, task.dim, task.index, kept, task.factors)
        return out, True

    def _low_rank(
        self, task: LowRankUpdate, out_dtype: torch.dtype | None, out: torch.Tensor | None
    ) -> tuple[torch.Tensor, bool]:
        """base + Σ factor·(b@a)[ᵀ] in one pass (`low_rank`), rounded once into the output: the
        target's buffer, the base itself when it is a float32 result nobody else holds, or new."""
        base, base_owned = self.run(task.base)
        # The factors are small: widening them in a 2-thread OpenMP region waits on a core the
        # prefetch threads hold (the weight itself is worked in row blocks over the cores).
        with one_intra_op_thread() if self.device.type == "cpu" else nullcontext():
            terms = [(self._float(t.b)[0], self._float(t.a)[0], t.factor, t.transpose) for t in task.terms]
            if out is None:
                dtype = out_dtype or torch.float32
                reuse = base_owned and base.dtype == dtype == torch.float32 and base.is_contiguous()
                out = base if reuse else torch.empty(task.shape, dtype=dtype, device=base.device)
            return low_rank_update(base, terms, out, exact=self.executor.exact_peft), True

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


def gather(
    out: torch.Tensor,
    value: torch.Tensor,
    dim: int,
    index: tuple[int, ...],
    kept: int,
    factors: tuple[float, ...] | None = None,
) -> None:
    """`out` = `value.index_select(dim, index)` (cast to out's dtype), each line whose factor is
    not 1 then multiplied by it (in float32, rounded once to out's dtype) — in row blocks over
    the cores. The first `kept` lines are the leading run and are copied as one block: gathering
    most of a matrix's columns one by one is several times slower than copying them."""
    device = value.device
    rest = torch.tensor(index[kept:], dtype=torch.long, device=device)
    scaling = _Scaling(out, value, index, factors) if factors is not None else None
    rows = out.shape[0]
    step = rows_per_block(rows, max(1, out[0].numel() if out.dim() > 1 else 1) * 4)
    if dim == 0:

        def lines(start: int, stop: int) -> None:
            middle = min(max(start, kept), stop)
            if middle > start:
                out[start:middle].copy_(value[start:middle])
            if stop > middle:
                _select_into(out[middle:stop], value, 0, rest[middle - kept : stop - kept])
            if scaling is not None:
                scaling.rows(out, value, start, stop)

    else:

        def lines(start: int, stop: int) -> None:
            part = out[start:stop]
            part.narrow(dim, 0, kept).copy_(value[start:stop].narrow(dim, 0, kept))
            _select_into(part.narrow(dim, kept, len(rest)), value[start:stop], dim, rest)
            if scaling is not None:
                scaling.lines(part, value[start:stop], dim)

    for_row_blocks(rows, step, lines, out.device)


def _select_into(out: torch.Tensor, value: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    if out.dtype == value.dtype:
        torch.index_select(value, dim, index, out=out)
    else:  # index_select does not cast
        out.copy_(value.index_select(dim, index))


class _Scaling:
    """The lines of a gathered tensor whose factor is not 1 (Net2Net's split neurons), scaled in
    place block by block. A line is multiplied in float32 and rounded once to out's dtype; where
    out holds the source lines exactly (same dtype, or float32) they are read back from out, and
    a factor that the dtype holds exactly (powers of two, in bfloat16 too) is applied in that
    dtype: the same rounding, without a float32 copy of the lines."""

    def __init__(self, out: torch.Tensor, value: torch.Tensor, index: tuple[int, ...], factors: tuple[float, ...]):
        device = out.device
        scaled = [position for position, factor in enumerate(factors) if factor != 1]
        self.positions = scaled
        self.at = torch.tensor(scaled, dtype=torch.long, device=device)
        self.sources = torch.tensor([index[p] for p in scaled], dtype=torch.long, device=device)
        self.wanted = torch.tensor([factors[p] for p in scaled], dtype=torch.float32, device=device)
        held = self.wanted.to(out.dtype)
        self.held = held if torch.equal(held.float(), self.wanted) else None
        self.from_out = out.dtype in (value.dtype, torch.float32)

    def lines(self, part: torch.Tensor, source: torch.Tensor, dim: int) -> None:
        """Scale the block `part` (its lines along `dim`; `source`: the same rows of value)."""
        if self.positions:
            self._apply(part, source, dim, slice(None), self.at)

    def rows(self, out: torch.Tensor, value: torch.Tensor, start: int, stop: int) -> None:
        """Scale the rows start:stop of `out` (lines along dim 0)."""
        first, last = bisect_left(self.positions, start), bisect_left(self.positions, stop)
        if first < last:
            self._apply(out[start:stop], value, 0, slice(first, last), self.at[first:last] - start)

    def _apply(self, part: torch.Tensor, source: torch.Tensor, dim: int, which: slice, at: torch.Tensor) -> None:
        shape = [1] * part.dim()
        shape[dim] = -1
        picked = part.index_select(dim, at) if self.from_out else source.index_select(dim, self.sources[which])
        if self.held is not None and picked.dtype == part.dtype:
            products = picked.mul_(self.held[which].reshape(shape))
        else:
            products = (picked.float() * self.wanted[which].reshape(shape)).to(part.dtype)
        part.index_copy_(dim, at, products)


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
