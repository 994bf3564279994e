"""The extraction job: plan pending shards, run them here or on dask, and summarise what was stored."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cellgap.core.progress import progress_bar
from cellgap.featurestore.encoders.encoder import pick_device
from cellgap.featurestore.extract.config import ExtractConfig
from cellgap.featurestore.extract.magnification import warn_if_assumed
from cellgap.featurestore.extract.plan import ExtractionPlan, plan_extraction
from cellgap.featurestore.extract.replicas import replica_count
from cellgap.featurestore.extract.shards import encode_shards
from cellgap.featurestore.store.lock import writer_lock
from cellgap.featurestore.store.writer import open_or_create

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractSummary:
    store: str
    tiles_total: int
    tiles_written: int
    seconds: float
    bytes_on_disk: int | None
    already_complete: bool
    encoder_replicas: int | None = None  # CPU replicas of a local run (None: on dask workers)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def bytes_per_tile(self) -> float | None:
        return self.bytes_on_disk / self.tiles_total if self.bytes_on_disk and self.tiles_total else None

    def lines(self) -> list[str]:
        if self.already_complete:
            return [f"{self.store}: all {self.tiles_total} tiles are already stored; nothing to do"]
        per_tile = self.bytes_per_tile  # not None only with bytes on disk
        size = f"{self.bytes_on_disk / 2**20:.1f} MiB on disk, {per_tile / 2**10:.0f} KiB/tile" \
            if self.bytes_on_disk and per_tile else "size unknown (remote store)"
        replicas = "" if self.encoder_replicas is None else \
            f" with {self.encoder_replicas} encoder replica{'s' if self.encoder_replicas > 1 else ''}"
        return [f"{self.store}: wrote {self.tiles_written} tiles ({self.tiles_total} in the store) in "
                f"{self.seconds:.1f} s{replicas}, {self.tiles_per_second:.1f} tiles/s; {size}"]


def directory_bytes(location: str) -> int | None:
    if "://" in location:
        return None
    return sum(p.stat().st_size for p in Path(location).rglob("*") if p.is_file())


def run_extraction(config: ExtractConfig) -> ExtractSummary:
    """Create or resume the store and fill every tile that is not done yet."""
    return run_plan(plan_extraction(config))


def run_plan(plan: ExtractionPlan) -> ExtractSummary:
    """Run a planned extraction (see `plan_extraction`) into `plan.config.store`."""
    with writer_lock(plan.config.store):
        return _run_locked(plan)


def _run_locked(plan: ExtractionPlan) -> ExtractSummary:
    config, metas = plan.config, plan.metas
    writer, existed = open_or_create(config.store, plan.manifest, metas)
    pending = writer.pending_shards()
    if not pending:
        writer.finalize()
        return ExtractSummary(config.store, len(metas), 0, 0.0, directory_bytes(config.store), already_complete=True)
    n_pending = sum(len(range(s * config.shard_tiles, min(len(metas), (s + 1) * config.shard_tiles))) for s in pending)
    if existed:
        log.info("resuming %s: %d of %d tiles left", config.store, n_pending, len(metas))
    started = time.perf_counter()
    replicas = None
    with progress_bar(n_pending, "extract", unit="tile", enabled=config.progress) as bar:
        if config.workers or config.scheduler:
            from cellgap.featurestore.extract.distributed import run_on_dask

            plan.encoder = None  # each worker loads its own copy; free this one's memory first
            written = run_on_dask(config, pending, manifest_sha=plan.manifest.encoder.weights_sha256,
                                  on_tiles=bar.update)
        else:
            if plan.encoder is None:
                raise ValueError("this plan's encoder was handed to dask workers; plan the extraction again")
            device = pick_device(config.device)
            if plan.encoder.device != device:
                plan.encoder.to(device)  # planned on another device (compare plans on the CPU)
            replicas = replica_count(device, config.replicas)
            written = encode_shards(plan.dataset, plan.encoder, writer, pending, config.batch_size, on_tiles=bar.update,
                                    replicas=replicas)
    seconds = time.perf_counter() - started
    writer.finalize()
    warn_if_assumed(config.dataset, plan.manifest.dataset.magnification_source)
    return ExtractSummary(config.store, len(metas), written, seconds, directory_bytes(config.store), False, replicas)
