"""Give heap memory freed by dropped tensors back to the operating system.

glibc raises its mmap threshold after the first large free, so later tensors of that size live in
malloc arenas, and freeing them does not lower the process's RSS: an unloaded adapter set would keep
its memory. `malloc_trim(0)` releases the free pages of every arena. Where libc has no
`malloc_trim` (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    return getattr(ctypes.CDLL(name), "malloc_trim", None)


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
