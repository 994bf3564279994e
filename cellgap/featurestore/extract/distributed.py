"""Running extraction on dask.distributed: shards as tasks, one encoder per worker, writes straight to the store.

Each task owns whole shards, so no two workers ever write one chunk or shard. Each worker loads the
data set from its spec and the encoder from its settings once (not per task), checks that the
weights it loaded hash to the manifest's, and writes through the same code path as a local run.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from distributed import WorkerPlugin

from cellgap.featurestore.errors import ManifestMismatchError, StoreError
from cellgap.featurestore.extract.config import ExtractConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
PLUGIN_NAME = "cellgap-extraction"


class ExtractionWorker(WorkerPlugin):
    """Each worker's side of an extraction, installed by dask on every worker (and on workers that join
    later): the allocator setting the `cellgap` command would apply, and what tasks built (the data set,
    the encoder), kept across shard tasks because a data set scan or an encoder load can cost more than
    a shard."""

    idempotent = True  # a second job on a long-lived cluster keeps the workers' encoders

    def __init__(self) -> None:
        self.built: dict[str, tuple[str, Any]] = {}

    def setup(self, worker: Any) -> None:
        from cellgap.core.allocator import keep_freed_memory

        keep_freed_memory()

    def teardown(self, worker: Any) -> None:
        self.built.clear()

    def get(self, name: str, key: str, build: Callable[[], T]) -> T:
        """What was built for `name` with these settings (`key`); other settings replace it."""
        if name not in self.built or self.built[name][0] != key:
            self.built[name] = (key, build())
        return self.built[name][1]


def _on_worker(name: str, key: str, build: Callable[[], T]) -> T:
    """The calling worker's `ExtractionWorker.get`."""
    from distributed import get_worker

    plugin = get_worker().plugins.get(PLUGIN_NAME)
    if not isinstance(plugin, ExtractionWorker):
        raise StoreError(f"dask worker {get_worker().address} has no {PLUGIN_NAME} plugin: "
                         "extraction tasks are submitted by `cellgap extract` only")
    return plugin.get(name, key, build)


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


def run_on_dask(config: ExtractConfig, shards: Sequence[int], manifest_sha: str,
                on_tiles: Callable[[int], None] | None = None) -> int:
    """Spread shards over the cluster's workers (one task per shard) and wait for all of them."""

    from cellgap.core.cluster import ClusterError, dask_client

    try:
        with dask_client(config.scheduler, config.workers) as (client, local):
            return _run_tasks(client, local, config, shards, manifest_sha, on_tiles)
    except ClusterError as error:
        raise StoreError(str(error)) from None


def _run_tasks(client: Any, local: bool, config: ExtractConfig, shards: Sequence[int], manifest_sha: str,
               on_tiles: Callable[[int], None] | None) -> int:
    from distributed import as_completed

    client.register_plugin(ExtractionWorker(), name=PLUGIN_NAME)
    n_workers = max(1, len(client.nthreads()))
    task_config = config.model_copy(update={"progress": False})
    futures = [client.submit(extract_task, task_config, [shard], manifest_sha, n_workers if local else 1,
                             pure=False, key=f"cellgap-shard-{shard}")
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
