"""A task's freed memory goes back to the machine when it ends, and so do the pages a library's
import alone used (kexue.core.memory)."""
from __future__ import annotations

import hashlib
import mmap
import os

import psutil
import pytest

from kexue.core.memory import _malloc_trim, library_mappings, release_freed_memory, release_library_pages


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc's malloc_trim")
def test_freed_heap_pages_between_live_blocks_are_returned():
    me = psutil.Process()
    blocks = [bytearray(1000) for _ in range(200_000)]  # ~200 MB from malloc (too big for pymalloc)
    pinned = blocks[::100]  # live blocks all over the heap: it cannot shrink from its top alone
    del blocks
    before = me.memory_info().rss
    release_freed_memory()
    assert me.memory_info().rss < before - 100 * 2**20, (before, me.memory_info().rss)
    assert len(pinned) == 2_000


MAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 1 /usr/bin/python3.11
7f0000000000-7f0000400000 r--p 00000000 08:01 2 /venv/tensorflow/libtensorflow_cc.so.2
7f0000400000-7f0001000000 r-xp 00400000 08:01 2 /venv/tensorflow/libtensorflow_cc.so.2
7f0001000000-7f0001100000 rw-p 01000000 08:01 2 /venv/tensorflow/libtensorflow_cc.so.2
7f0002000000-7f0002100000 rw-p 00000000 00:00 0
7f0003000000-7f0003100000 r--p 00000000 08:01 3 /data/tokens.parquet
7f0004000000-7f0004010000 r-xp 00000000 08:01 4 /venv/numpy/_multiarray_umath.cpython-311-x86_64-linux-gnu.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_library_mappings_are_the_read_only_mappings_of_shared_libraries():
    assert library_mappings(MAPS) == [(0x7f0000000000, 0x7f0000400000), (0x7f0000400000, 0x7f0001000000),
                                      (0x7f0004000000, 0x7f0004010000)]


def test_pages_only_this_process_maps_are_handed_back_and_read_again_on_use(tmp_path):
    lib = tmp_path / "libblob.so"  # a "library" no other process maps: 64 MB of known bytes
    data = os.urandom(1 << 20) * 64
    lib.write_bytes(data)
    with open(lib, "rb") as f:
        os.fsync(f.fileno())  # clean pages, as a library's are
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert sum(view[i] for i in range(0, len(view), mmap.PAGESIZE)) >= 0  # every page resident
        before = psutil.Process().memory_info().rss
        released = release_library_pages()
        if released is None:
            pytest.skip("the kernel has no MADV_PAGEOUT (Linux < 5.4)")
        after = psutil.Process().memory_info().rss
        assert released >= 48 * 2**20 and after < before - 48 * 2**20, (released, before, after)
        assert hashlib.sha256(view[:]).digest() == hashlib.sha256(data).digest()  # read back intact
    finally:
        view.close()
