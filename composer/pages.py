"""Fresh CPU memory for the tensors the composer computes, with its pages already in place.

A merged or grown weight is new memory: the first write to each 4 KiB page traps into the
kernel, which finds and zeroes a page for it — on the 2-vCPU benchmark VM at 2.6 GB/s,
slower than computing a LoRA merge. `fresh_tensor` has the kernel populate the whole buffer
in one call instead (`MADV_POPULATE_WRITE`, Linux ≥ 5.14: 3.4–3.9 GB/s there, no trap per
page), and the executor calls it on a helper thread ahead of use, so that the work overlaps
the computation of the tensors before. Elsewhere (another OS, an older kernel) the buffer is
touched page by page on that thread.

Transparent huge pages were measured and left out: where free 2 MiB pages exist they fault
at 8.5 GB/s, but a composed model keeps every buffer it gets, and on a machine whose memory
is full of page cache each new huge page costs a compaction: 0.46 GB/s.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import sys

import torch

_PAGE = mmap.PAGESIZE
_MADV_POPULATE_WRITE = 23  # linux/mman.h
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_populate_works = _libc is not None


def fresh_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor whose pages are already faulted in."""
    global _populate_works
    tensor = torch.empty(shape, dtype=dtype)
    nbytes = tensor.numel() * tensor.element_size()
    start = -(-tensor.data_ptr() // _PAGE) * _PAGE  # the whole pages inside the buffer
    length = (tensor.data_ptr() + nbytes - start) // _PAGE * _PAGE
    if _populate_works and length > 0:
        assert _libc is not None
        if _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), _MADV_POPULATE_WRITE) == 0:
            return tensor
        if ctypes.get_errno() == errno.EINVAL:  # before Linux 5.14: touch, from now on
            _populate_works = False
    if tensor.numel():
        tensor.view(-1).view(torch.uint8)[::_PAGE].zero_()
    return tensor
