"""Row blocks: how the executor spreads one tensor's arithmetic over the CPU cores.

torch's own intra-op parallelism splits every operation statically between its OpenMP
threads and waits for the slowest at a barrier. On a machine whose cores are shared, a
thread that the scheduler has parked holds every operation up: on the 2-vCPU benchmark VM
under load, a bf16 → float32 copy of an 8 MiB block ran at 1.7 GB/s on two threads against
74 GB/s on one, a rank-16 sgemm at 12 against 62 GFLOP/s (issue 19). So the executor's
kernels run each operation on one thread and take whole row blocks from a shared queue: the
calling thread itself and up to one worker per other usable core. A parked worker delays only
the block it holds while the others take the rest, and the caller never waits for a worker
that has not started (waking a thread on a busy machine costs a scheduler slice: with the
caller waiting on a pool of two, a merge beside a hashing thread ran at 0.85 GB/s against
2.5 GB/s on the caller alone). On a quiet machine the threads run side by side, as the
OpenMP threads would. For the duration of a run torch's intra-op threads
are set to 1 (process-wide: torch has no per-thread setting for MKL), then restored.

Blocks are about `BLOCK_BYTES` of float32 temporaries: a few MiB stay in the cache between
the passes a block takes (widen, multiply-add, round).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import torch

BLOCK_BYTES = 8 << 20
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_scratch = threading.local()


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def rows_per_block(rows: int, row_bytes: int) -> int:
    """How many rows of `row_bytes` bytes make one block of about `BLOCK_BYTES` (at least one)."""
    return min(max(rows, 1), max(1, BLOCK_BYTES // max(1, row_bytes)))


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch runs each operation on the calling thread until the block ends."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def scratch(numel: int, device: torch.device) -> torch.Tensor:
    """A float32 buffer of `numel` elements owned by the calling thread, reused from call to
    call (a worker allocates, and page-faults, its temporaries once)."""
    buffers: dict[torch.device, torch.Tensor] = getattr(_scratch, "buffers", None) or {}
    _scratch.buffers = buffers
    buffer = buffers.get(device)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buffer[:numel]


def _workers() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:  # made inside a one-thread region, so its threads start at one intra-op thread
            _pool = ThreadPoolExecutor(max(1, usable_cores() - 1), "weightbank-rows")
        return _pool


class _Blocks:
    """The blocks of one `for_row_blocks` call, taken one at a time by whoever is running."""

    def __init__(self, rows: int, step: int, work: Callable[[int, int], None]) -> None:
        self.rows, self.step, self.work = rows, step, work
        self.starts = deque(range(0, rows, step))
        self.running = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def run(self) -> None:
        """Take and work blocks until none is left (or one has failed)."""
        while True:
            with self.changed:
                if not self.starts or self.error is not None:
                    return
                start = self.starts.popleft()
                self.running += 1
            try:
                self.work(start, min(self.rows, start + self.step))
            except BaseException as exc:  # handed to the caller
                with self.changed:
                    self.error = self.error or exc
            finally:
                with self.changed:
                    self.running -= 1
                    self.changed.notify_all()

    def wait(self) -> None:
        """Until the blocks others started are done; then raise what one of them raised."""
        with self.changed:
            while self.running:
                self.changed.wait()
        if self.error is not None:
            raise self.error


def for_row_blocks(rows: int, step: int, work: Callable[[int, int], None], device: torch.device) -> None:
    """`work(start, stop)` for every block of `step` rows, each on one thread. On the CPU the
    calling thread works through the blocks itself while up to one worker per other core helps:
    it waits only for blocks a worker has started, never for a worker the scheduler has not run
    yet. On a GPU the kernels are queued in order from this thread, the device doing the
    parallel work."""
    starts = range(0, rows, step)
    if device.type != "cpu" or len(starts) <= 1 or usable_cores() == 1:
        with one_intra_op_thread() if device.type == "cpu" else nullcontext():
            for start in starts:
                work(start, min(rows, start + step))
        return
    with one_intra_op_thread():
        blocks = _Blocks(rows, step, work)
        pool = _workers()
        for _ in range(min(usable_cores(), len(starts)) - 1):
            pool.submit(blocks.run)
        blocks.run()
        blocks.wait()
