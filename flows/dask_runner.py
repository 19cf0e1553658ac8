"""Prefect's Dask task runner, submitting each task run under a fresh key, with the settings as an object.

Why: Prefect's runner submits with Dask's default ``pure=True``, so Dask names each task by
hashing the callable and all its arguments: the task object (pickled by value, as its wrapper
is a closure), the parameters and the serialised flow-run context: a quarter of every submit
in the flow process (median 76–102 → 54–76 ms), paid one task at a time while, in the
tokenize stage, the second worker waited for its first partition. The hash buys nothing:
every task run carries a new run id, so its key is unique anyway. The key's prefix stays the
function's name, which the dashboard groups by and ``flows.runtime.TASK_SECONDS`` is looked
up under.

And the settings: Prefect serialises the settings context for every task run it submits,
dumping the whole settings tree (~15 ms in the flow process), and the worker validates that
dump back into a ``Settings``, each of its ~50 nested models re-reading the environment
(30-40 ms), before the task starts: ~50 ms a task on the critical path of every stage. Handed
over as the ``Settings`` object itself (``_SettingsByValue``), pickled, they cost ~1 ms on
both sides. Prefect's dump also turns paths into strings, for a worker on another OS than
the flow's; a kexue cluster's workers run the flow's.

A module of its own because importing it imports Prefect and Dask, which ``kexue check``
does not need; and at module level because the runner travels with the flow to every task
(a class made inside a function would be pickled by value each time).
"""
from __future__ import annotations

import uuid
from typing import Any

import prefect_dask
from dask.utils import funcname
from prefect.context import SettingsContext


class _SettingsByValue(SettingsContext):
    """The current settings context, serialised as its ``Profile`` and ``Settings`` objects."""

    def serialize(self, include_secrets: bool = True) -> dict[str, Any]:
        return {"profile": self.profile, "settings": self.settings}  # secrets included, as Prefect's default


class _FreshKeyClient:
    """The runner's client, with ``key`` defaulting to ``<function name>-<uuid>`` in ``submit``,
    which passes the settings by value."""

    def __init__(self, client: Any):
        self._client = client

    def submit(self, func: Any, *args: Any, key: str | None = None, **kwargs: Any) -> Any:
        settings = SettingsContext.get()
        with _SettingsByValue(profile=settings.profile, settings=settings.settings):
            return self._client.submit(func, *args, key=key or f"{funcname(func)}-{uuid.uuid4().hex}", **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class DaskTaskRunner(prefect_dask.DaskTaskRunner):
    """``prefect_dask.DaskTaskRunner`` whose submits go through ``_FreshKeyClient``."""

    @property
    def client(self) -> Any:
        return _FreshKeyClient(super().client)
