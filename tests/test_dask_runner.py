"""flows.dask_runner: a task run on a Dask worker gets the submitting flow's settings."""
from __future__ import annotations

from prefect import task
from prefect.context import SettingsContext, serialize_context
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from flows.dask_runner import _FreshKeyClient, _SettingsByValue


@task
def max_retries_seen() -> int:
    return SettingsContext.get().settings.client.max_retries


def test_the_settings_travel_as_the_settings_object():
    current = SettingsContext.get()
    with _SettingsByValue(profile=current.profile, settings=current.settings):
        assert serialize_context()["settings_context"]["settings"] is current.settings


def test_a_task_on_a_worker_sees_the_settings_of_the_process_that_submitted_it(prefect_api):
    """Dask's worker threads do not inherit the submitter's context: only what the submit
    carries sets the task's settings (here an API URL and a value the environment lacks)."""
    from distributed import LocalCluster
    from prefect_dask.client import PrefectDaskClient

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            PrefectDaskClient(cluster) as dask_client, \
            temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_CLIENT_MAX_RETRIES: 7}):
        future = _FreshKeyClient(dask_client).submit(max_retries_seen, parameters={})
        assert future.result(timeout=120) == 7
