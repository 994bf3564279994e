"""Finding stores by what they hold, not by their folder name: scan a folder, compare manifests.

A store is reusable for a job when `check_compatible` accepts its manifest against the manifest
the job would write (same encoder identity and weights hash, same tiles, same storage settings);
its folder name plays no part.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from cellgap.featurestore.errors import ManifestMismatchError, StoreError
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import read_all
from cellgap.featurestore.store.location import open_group
from cellgap.featurestore.store.manifest import (
    Manifest,
    check_compatible,
    differences,
    encoder_differences,
    parse_manifest,
)
from cellgap.featurestore.store.writer import CREATING

log = logging.getLogger(__name__)
StoreState = Literal["absent", "creating", "store", "other"]


def store_state(path: Path) -> StoreState:
    """What is at `path`: nothing, a store cut short while being created, a cellgap store, or something else."""
    return _inspect(Path(path))[0]


def _inspect(path: Path) -> tuple[StoreState, Manifest | None]:
    """The state of `path` and, for a store, its manifest, from one read of the group's attributes."""
    if not path.exists():
        return "absent", None
    if not (path / "zarr.json").is_file():
        return ("other" if path.is_file() or any(path.iterdir()) else "absent"), None
    try:
        attributes = open_group(str(path), mode="r").attrs.asdict()
    except (StoreError, FileNotFoundError):
        return "other", None
    if CREATING in attributes:
        return "creating", None
    try:
        return "store", parse_manifest(attributes, str(path))
    except StoreError:
        return "other", None


def read_manifest(path: Path) -> Manifest:
    """The manifest of the store at `path` (StoreError if it is not a readable cellgap store)."""
    return parse_manifest(open_group(str(path), mode="r").attrs.asdict(), str(path))


def is_complete(path: Path) -> bool:
    """Every tile of the store is done."""
    group = open_group(str(path), mode="r")
    return bool(read_all(group, layout.DONE).astype(bool).all())


def scan_stores(stores_root: Path) -> list[tuple[Path, Manifest]]:
    """Every readable cellgap store directly under `stores_root`, by folder name; others are skipped."""
    root = Path(stores_root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(p for p in root.iterdir() if p.is_dir()):
        state, manifest = _inspect(path)
        if manifest is not None:
            found.append((path, manifest))
        else:
            log.debug("skipping %s: %s", path, state)
    return found


def incompatibility(stored: Manifest, wanted: Manifest) -> list[str]:
    """Dotted manifest fields that keep a store from serving a job (empty when it can)."""
    found = [f"encoder.{d}" for d in encoder_differences(stored.encoder, wanted.encoder)]
    found += [f"dataset.{d}" for d in differences(stored.dataset.model_dump(exclude={"path"}),
                                                   wanted.dataset.model_dump(exclude={"path"}))]
    found += [f"storage.{d}" for d in differences(stored.storage.model_dump(), wanted.storage.model_dump())]
    return found


def find_compatible(stores_root: Path, wanted: Manifest) -> Path | None:
    """A store under `stores_root` whose manifest is compatible with `wanted`, or None.

    Complete stores are preferred over partial ones (which extraction can resume); among equals
    the first folder name in sorted order wins.
    """
    candidates = []
    for path, stored in scan_stores(stores_root):
        try:
            check_compatible(stored, wanted, str(path), writing=not is_complete(path))  # a partial one is resumed
        except ManifestMismatchError:
            log.debug("%s is not compatible: differs in %s", path, ", ".join(incompatibility(stored, wanted)[:4]))
            continue
        candidates.append((not is_complete(path), path.name, path))
    return min(candidates)[2] if candidates else None
