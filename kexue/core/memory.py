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

Shared libraries are the other part (``release_library_pages``): importing TensorFlow
reads 366 MB of its libraries into the process, most of which only the import itself uses.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import sys
from typing import Callable

MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim the range's pages now (madvise(2))


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library (``errno`` kept for ``ctypes.get_errno``), or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    return getattr(_libc(), "malloc_trim", None)


def release_freed_memory() -> None:
    """Return freed heap pages (glibc) and Arrow's unused pool memory to the system."""
    if "pyarrow" in sys.modules:  # never imported just for this
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """The C library's ``madvise``, or None off Linux."""
    f = getattr(_libc(), "madvise", None) if sys.platform.startswith("linux") else None
    if f is None:
        return None
    f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return f


def library_mappings(maps: str) -> list[tuple[int, int]]:
    """(start, end) of each read-only mapping of a shared library in ``/proc/<pid>/maps`` text:
    the code and constants of every loaded ``.so``, which the kernel can always read back."""
    out = []
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or not fields[5].startswith("/") or ".so" not in os.path.basename(fields[5]):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        out.append((start, end))
    return out


def resident_bytes() -> int:
    """This process's RSS now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_library_pages() -> int | None:
    """Hand the pages of loaded shared libraries back to the kernel; the bytes of RSS that
    freed, or None where the kernel cannot (not Linux, or Linux before 5.4).

    Why: ``import tensorflow`` makes the process 650 MB resident, 366 MB of it pages of
    TensorFlow's libraries: the dynamic loader's relocations and the static initialisers that
    register every op and kernel walk most of ``libtensorflow_cc.so``, and training then runs
    on a small part of it. Those pages are clean copies of files, so the kernel can drop them
    (``MADV_PAGEOUT``) and read back the ones touched again: JoSE's step touched 110 MB
    more while XLA compiled it, and none after. Pages another process maps as well (a library
    a sibling worker also uses) are not this process's alone, and the kernel leaves them be.
    """
    madvise = _madvise()
    if madvise is None:
        return None
    try:
        with open("/proc/self/maps") as f:
            mappings = library_mappings(f.read())
    except OSError:
        return None
    before = resident_bytes()
    understood = False  # EINVAL from every call: a kernel without MADV_PAGEOUT
    for start, end in mappings:
        understood |= madvise(start, end - start, MADV_PAGEOUT) == 0 or ctypes.get_errno() != errno.EINVAL
    if mappings and not understood:
        return None
    return max(0, before - resident_bytes())
