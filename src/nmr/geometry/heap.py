"""Keep freed large blocks in the process heap, so per-frame numpy temporaries do not page-fault.

Why: a frame's processing allocates dozens of image-sized temporaries (1-5 MB each at 640x512). glibc
serves blocks that large with a fresh ``mmap`` and returns them to the kernel on free (or trims the heap
top once more than a few MB are free), so every frame touches its temporaries' pages anew: one page fault
per 4 KiB, the kernel zeroing each page. On the 2-core development machine under load that was most of the
geometric stage's time (flow through depth at 640x512: the projection 10 ms with fresh pages, 1 ms with
reused ones; benchmarks/rig_cost.py). Raising glibc's mmap and trim thresholds (``mallopt``, the same as
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment) keeps those blocks in the heap
and reuses them frame after frame. The price: the process keeps its peak heap instead of returning it
(tens of MB for a node at camera size); after a drop in frame size nmr.pipeline.memory still returns the
free heap explicitly (``malloc_trim``, which ignores these thresholds). Not glibc (musl, macOS): nothing
is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

#: blocks below this come from the heap (glibc's default: 128 KiB, growing dynamically up to 32 MiB, the
#: largest value older glibc accepts; a 640x512 frame's largest temporary is ~5 MB)
MMAP_THRESHOLD = 32 << 20
#: the heap top is returned to the kernel only when more than this is free at its end
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_done: bool | None = None


def retain_freed_blocks() -> bool:
    """Set glibc's mmap and trim thresholds once per process (module docstring); True when set."""
    global _done
    with _lock:
        if _done is None:
            try:
                mallopt = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').mallopt
            except (OSError, AttributeError):  # not glibc
                _done = False
            else:
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                                          TRIM_THRESHOLD))
        return _done
