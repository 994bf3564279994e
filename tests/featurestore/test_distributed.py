"""The dask worker plugin builds a data set or an encoder once per worker and settings, not once per task."""
from __future__ import annotations

import pytest

from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.extract.distributed import PLUGIN_NAME, ExtractionWorker, _on_worker


def test_built_once_per_settings_and_replaced_when_they_change():
    plugin, builds = ExtractionWorker(), []

    def build(value):
        builds.append(value)
        return value

    assert plugin.get("encoder", "a", lambda: build(1)) == 1
    assert plugin.get("encoder", "a", lambda: build(2)) == 1  # cached: no second build
    assert plugin.get("encoder", "b", lambda: build(3)) == 3  # other settings: rebuilt
    assert builds == [1, 3]
    plugin.teardown(None)
    assert plugin.built == {}


def test_tasks_reach_their_worker_s_plugin_and_a_worker_without_it_is_a_clear_error():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        with pytest.raises(StoreError, match=PLUGIN_NAME):
            client.submit(_on_worker, "x", "k", lambda: 1, pure=False).result()
        client.register_plugin(ExtractionWorker(), name=PLUGIN_NAME)
        first = client.submit(_on_worker, "x", "k", object, pure=False).result()
        again = client.submit(_on_worker, "x", "k", object, pure=False).result()
        assert first is again  # the same object: built once on the worker
