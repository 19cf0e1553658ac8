"""Give freed memory back to the machine: when a task ends, and between a stage's phases.

Why: a tokenize task allocates ~150 MiB in its worker (Python token strings, rjieba's
buffers, Arrow arrays) and frees it, but the worker stayed ~100 MiB larger than before it,
60–70 MiB of that freed memory (measured over three partitions in one process): glibc
returns free heap pages to the system only from the top of its heaps, and the freed blocks
sit between live ones; Arrow's pool (mimalloc) keeps its own. On a 2-core machine the
workers, the flow, the fork server and the Prefect API share a few GiB, and the next task
(or another process) should get those pages. Dask asks glibc to trim eagerly through its
nanny's environment (``MALLOC_TRIM_THRESHOLD_``); that threshold, measured, did not return
these pages, and it slowed TensorFlow's training 1.5-1.7x, so ``flows.runtime`` unsets it
for a run's workers. ``malloc_trim(0)`` returns them, in a few milliseconds.

Within one stage the same holds between phases: JoSE's peak is the sum of what each phase
(reading the corpus, building the table, compiling the step) left behind.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Return freed heap pages (glibc) and Arrow's unused pool memory to the system."""
    if "pyarrow" in sys.modules:  # never imported just for this
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
