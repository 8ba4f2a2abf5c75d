"""Zero a slot of a preallocated bank and give its memory back to the operating system.

A bank is one tensor for all slots, so an unloaded slot cannot be freed on its own; on the CPU its
whole pages are returned with `madvise(MADV_DONTNEED)` (they read as zeros and are mapped again only
when a later set writes the slot), so the process's RSS drops when a set is unloaded. Elsewhere, and
where libc has no `madvise`, the slot is only zeroed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from functools import cache

import torch

_MADV_DONTNEED = 4


@cache
def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    function = getattr(ctypes.CDLL(name, use_errno=True), "madvise", None)
    if function is not None:
        function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return function


def zero_and_release(view: torch.Tensor) -> None:
    """`view.zero_()`, returning the whole pages it spans to the OS (contiguous CPU views)."""
    view.zero_()
    madvise = _madvise()
    if view.device.type != "cpu" or not view.is_contiguous() or madvise is None:
        return
    start = view.data_ptr()
    end = start + view.numel() * view.element_size()
    first_page = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    last_page = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last_page > first_page:
        madvise(first_page, last_page - first_page, _MADV_DONTNEED)
