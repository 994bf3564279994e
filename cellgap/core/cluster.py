"""A dask.distributed client for a job: an existing scheduler's, or a local cluster of worker processes."""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


class ClusterError(Exception):
    """The scheduler cannot be reached."""


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[tuple[Any, bool]]:
    """(client, local): `scheduler`'s cluster, else `workers` local single-threaded worker processes; both are
    closed on exit. `local` tells the caller that the workers share this machine's cores."""
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"cannot reach the dask scheduler at {scheduler} ({error})") from None
    else:
        cluster = LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        yield client, cluster is not None
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
