"""Giving memory back to the system after the frame size drops (issue 22, item 4).

Why: glibc serves blocks below its mmap threshold from the heap and keeps freed heap pages. After a
burst of large frames that threshold has grown (to 32 MB: glibc raises it when an mmapped block is
freed), so the next, middle-sized frames' buffers (torch's pre-processing tensors, OpenCV's, the grids)
land on the heap and stay resident when the size drops again: 4096x3072 -> 1920x1536 -> 1280x1024 ->
640x512 ended at 461 MB RSS against 342 MB before the burst (benchmarks/memory_per_size.py --sequence).
`malloc_trim(0)` returns those free pages. It walks the heap (a few ms), so it runs only after a size
change, never per set: once at the first set after the change (the previous size's grids and outputs
are freed by then) and once more a few sets later (outputs that the caller kept a little longer).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable, Hashable
from typing import Any

_malloc_trim: Any = None


def release_free_heap() -> bool:
    """glibc's malloc_trim(0): free heap pages back to the system; False where there is no glibc."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
            _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _malloc_trim = False
    if _malloc_trim is False:
        return False
    _malloc_trim(0)
    return True


class SizeChangeTrimmer:
    """Calls `trim` on the sets `after` (counted from the first set of a new size), only after a size change.

    `observe(size)` once per set with that set's sizes; the steady state costs a tuple comparison.
    """

    def __init__(self, after: tuple[int, ...] = (1, 4), trim: Callable[[], object] = release_free_heap) -> None:
        self._after = tuple(sorted(after))
        self._trim = trim
        self._size: Hashable = None
        self._since = -1  # sets since the last size change; -1: nothing pending

    def observe(self, size: Hashable) -> None:
        if size != self._size:
            changed = self._size is not None
            self._size = size
            self._since = 0 if changed else -1
            return
        if self._since < 0:
            return
        self._since += 1
        if self._since in self._after:
            self._trim()
        if self._since >= self._after[-1]:
            self._since = -1
