"""Prefect's Dask task runner, submitting each task run under a fresh key.

Why: Prefect's runner submits with Dask's default ``pure=True``, so Dask names each task by
hashing the callable and all its arguments: the task object (pickled by value, as its wrapper
is a closure), the parameters and the serialised flow-run context: a quarter of every submit
in the flow process (median 76–102 → 54–76 ms), paid one task at a time while, in the
tokenize stage, the second worker waited for its first partition. The hash buys nothing:
every task run carries a new run id, so its key is unique anyway. The key's prefix stays the
function's name, which the dashboard groups by and ``flows.runtime.TASK_SECONDS`` is looked
up under.

A module of its own because importing it imports Prefect and Dask, which ``kexue check``
does not need; and at module level because the runner travels with the flow to every task
(a class made inside a function would be pickled by value each time).
"""
from __future__ import annotations

import uuid
from typing import Any

import prefect_dask
from dask.utils import funcname


class _FreshKeyClient:
    """The runner's client, with ``key`` defaulting to ``<function name>-<uuid>`` in ``submit``."""

    def __init__(self, client: Any):
        self._client = client

    def submit(self, func: Any, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        return self._client.submit(func, *args, key=key or f"{funcname(func)}-{uuid.uuid4().hex}", **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class DaskTaskRunner(prefect_dask.DaskTaskRunner):
    """``prefect_dask.DaskTaskRunner`` whose submits go through ``_FreshKeyClient``."""

    @property
    def client(self) -> Any:
        return _FreshKeyClient(super().client)
