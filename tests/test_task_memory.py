"""A task's freed memory goes back to the machine when it ends (kexue.core.memory)."""
from __future__ import annotations

import psutil
import pytest

from kexue.core.memory import _malloc_trim, release_freed_memory


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
