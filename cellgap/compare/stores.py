"""One store job: find a store whose manifest fits (under any folder name), resume it, or build a new one.

Reuse is decided only by manifests: the manifest the extraction would write is planned (data set
opened, encoder built, nothing written) and compared with every store under the report's `stores/`
folder and the config's `store_dirs`. A folder that merely has the expected name is never trusted.
Extraction speed is recorded beside the store when it is built (`<store>.extract.json`) and read
back when the store is reused.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cellgap.compare.config import ExtractSettings
from cellgap.compare.grid import StoreJob
from cellgap.core.atomic import write_atomically
from cellgap.featurestore.extract.job import run_plan
from cellgap.featurestore.extract.plan import plan_extraction
from cellgap.featurestore.store.catalog import (
    find_compatible,
    is_complete,
    read_manifest,
    store_state,
)
from cellgap.featurestore.store.manifest import Manifest

log = logging.getLogger(__name__)
COST_SUFFIX = ".extract.json"


@dataclass(frozen=True)
class StoreOutcome:
    """Where a store job's features are, how they got there, and what they cost."""

    path: str
    manifest: Manifest
    action: Literal["built", "resumed", "reused"]
    tiles: int
    tiles_per_second: float | None  # extraction speed recorded when the store was built
    feature_bytes_per_tile: float | None
    seconds: float  # this job's wall time (planning included)

    def line(self) -> str:
        speed = "n/a" if self.tiles_per_second is None else f"{self.tiles_per_second:.1f} tiles/s"
        size = "n/a" if self.feature_bytes_per_tile is None else f"{self.feature_bytes_per_tile / 2**10:.0f} KiB/tile"
        return f"{self.action} {self.path} ({self.tiles} tiles; extraction {speed}; features {size})"


def manifest_hash(manifest: Manifest) -> str:
    """8 hex digits over what makes stores interchangeable (encoder identity, tiles, storage; not paths or dates)."""
    identity = {"encoder": manifest.encoder.identity(), "dataset": manifest.dataset.model_dump(exclude={"path"}),
                "storage": manifest.storage.model_dump()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def cost_record_path(store: Path) -> Path:
    return store.with_name(store.name + COST_SUFFIX)


def read_cost_record(store: Path) -> dict | None:
    try:
        return json.loads(cost_record_path(store).read_text())
    except (OSError, ValueError):
        return None


def _write_cost_record(store: Path, tiles_total: int, written: int, seconds: float, device: str) -> dict:
    """Record (or extend, after a resumed extraction) the tiles written and the seconds they took."""
    before = read_cost_record(store) or {}
    written_total = int(before.get("tiles_written", 0)) + written
    seconds_total = float(before.get("seconds", 0.0)) + seconds
    speed = written_total / seconds_total if seconds_total > 0 else None
    record = {"store": store.name, "tiles_total": tiles_total, "tiles_written": written_total,
              "seconds": seconds_total, "tiles_per_second": speed,
              "device": device, "recorded": datetime.now(UTC).isoformat(timespec="seconds")}
    path = cost_record_path(store)
    write_atomically(path, json.dumps(record, indent=2) + "\n")
    return record


def feature_bytes_per_tile(store: Path) -> float | None:
    """Bytes on disk of the stored features (every layer and view) per done tile."""
    from cellgap.featurestore.store.info import describe
    from cellgap.featurestore.store.reader import open_store

    try:
        return float(describe(open_store(str(store)))["bytes"]["features_per_tile"])
    except (OSError, ValueError):
        return None


def new_store_path(stores_root: Path, job: StoreJob, wanted: Manifest) -> Path:
    """`<dataset>-<encoder>-<layers>-<hash8>.zarr`, with -2, -3, ... when that folder holds something else."""
    base = f"{job.folder_stem()}-{manifest_hash(wanted)}"
    path, number = Path(stores_root) / f"{base}.zarr", 1
    while store_state(path) in ("store", "other"):  # a half-created store ("creating") is recreated in place
        number += 1
        path = path.with_name(f"{base}-{number}.zarr")
    return path


def prepare_store(job: StoreJob, stores_root: Path, extra_roots: list[Path], extract: ExtractSettings, *,
                  device: str | None = None, progress: bool = False) -> StoreOutcome:
    """Reuse a compatible store, resume a compatible partial one, or build a new one under `stores_root`."""
    started = time.perf_counter()
    config = job.extract_config("", extract, device=device, progress=progress)
    # the encoder is built once, on the CPU as planning needs no GPU: for the manifest, and to extract if need be
    plan = plan_extraction(config, device="cpu")
    wanted = plan.manifest
    found = None
    for root in [Path(stores_root), *map(Path, extra_roots)]:
        found = find_compatible(root, wanted)
        if found is not None:
            break
    if found is not None and is_complete(found):
        action: Literal["built", "resumed", "reused"] = "reused"
        target = found
        log.info("%s: reusing %s (compatible manifest)", job.key, found)
    else:
        target = found or new_store_path(stores_root, job, wanted)
        action = "resumed" if found is not None else "built"
        target.parent.mkdir(parents=True, exist_ok=True)
        plan = plan.with_store(str(target))  # the one reference: run_plan may hand the encoder to dask workers
        summary = run_plan(plan)
        if summary.tiles_written:
            _write_cost_record(target, summary.tiles_total, summary.tiles_written, summary.seconds, config.device)
    record = read_cost_record(target) or {}
    manifest = read_manifest(target)
    return StoreOutcome(path=str(target), manifest=manifest, action=action, tiles=manifest.dataset.n_tiles,
                        tiles_per_second=record.get("tiles_per_second"),
                        feature_bytes_per_tile=feature_bytes_per_tile(target),
                        seconds=time.perf_counter() - started)
