"""Running extraction on dask.distributed: shards as tasks, one encoder per worker, writes straight to the store.

Each task owns whole shards, so no two workers ever write one chunk or shard. Each worker loads the
data set from its spec and the encoder from its settings once (not per task), checks that the
weights it loaded hash to the manifest's, and writes through the same code path as a local run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cellgap.featurestore.errors import ManifestMismatchError, StoreError
from cellgap.featurestore.extract.config import ExtractConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
_CACHE = "_cellgap_cache"  # the attribute of a dask worker that holds what `_on_worker` built


def _on_worker(name: str, key: str, build: Callable[[], T]) -> T:
    """What this worker process built for these settings: built once per worker, not once per shard task
    (a data set scan or an encoder load can cost more than a shard); other settings replace it."""
    from distributed import get_worker

    worker = get_worker()
    cache: dict[str, tuple[str, Any]] | None = getattr(worker, _CACHE, None)
    if cache is None:
        from cellgap.core.allocator import keep_freed_memory

        keep_freed_memory()  # a worker process is started by dask, not by the cellgap command that sets this
        cache = {}
        setattr(worker, _CACHE, cache)  # dask's Worker has no such attribute of its own
    if name not in cache or cache[name][0] != key:
        cache[name] = (key, build())
    return cache[name][1]


def extract_task(config: ExtractConfig, shards: list[int], manifest_sha: str, n_workers: int) -> int:
    """One task on a worker: encode and write the given shards; returns tiles written."""
    from cellgap.featurestore.datasets import open_dataset
    from cellgap.featurestore.encoders.encoder import FrozenEncoder, pick_device
    from cellgap.featurestore.extract.replicas import set_cpu_threads
    from cellgap.featurestore.extract.shards import encode_shards
    from cellgap.featurestore.store.location import open_group
    from cellgap.featurestore.store.manifest import parse_manifest
    from cellgap.featurestore.store.writer import StoreWriter

    set_cpu_threads(n_workers)
    encoder = _on_worker("encoder", config.encoder.model_dump_json() + config.device,
                         lambda: FrozenEncoder(config.encoder, device=pick_device(config.device)))
    if encoder.description.weights_sha256 != manifest_sha:
        raise ManifestMismatchError(
            f"worker loaded weights {encoder.description.weights_sha256[:12]} for {config.encoder.name!r}, "
            f"but the store expects {manifest_sha[:12]}; every worker must see the same weights")
    group = open_group(config.store, mode="r+")  # opened per task: it may be a new store at this path
    writer = StoreWriter(group, parse_manifest(group.attrs.asdict(), config.store), config.store)
    dataset = _on_worker("dataset", f"{config.split_seed}|{writer.manifest.dataset.model_dump_json()}",  # same tiles
                         lambda: open_dataset(config.dataset, tile_size=config.encoder.tile_size,
                                              split_seed=config.split_seed))
    return encode_shards(dataset, encoder, writer, shards, config.batch_size, replicas=config.replicas)


def _client(config: ExtractConfig):
    from distributed import Client, LocalCluster

    if config.scheduler:
        try:
            return Client(config.scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as error:
            raise StoreError(f"cannot reach the dask scheduler at {config.scheduler} ({error})") from None
    cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def run_on_dask(config: ExtractConfig, shards: Sequence[int], manifest_sha: str,
                on_tiles: Callable[[int], None] | None = None) -> int:
    """Spread shards over the cluster's workers (one task per shard) and wait for all of them."""
    from distributed import as_completed

    client, cluster = _client(config)
    try:
        n_workers = max(1, len(client.nthreads()))
        task_config = config.model_copy(update={"progress": False})
        futures = [client.submit(extract_task, task_config, [shard], manifest_sha,
                                 n_workers if cluster is not None else 1, pure=False, key=f"cellgap-shard-{shard}")
                   for shard in shards]
        written = 0
        try:
            for future in as_completed(futures):
                count = future.result()
                written += count
                if on_tiles is not None:
                    on_tiles(count)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return written
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
