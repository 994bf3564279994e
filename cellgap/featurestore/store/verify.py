"""`cellgap store verify`: read every chunk of a store and every tile's pixels, and name the damaged tiles.

Reading a store checks each tile's checksum the first time a reader hands it out; verifying goes
further and reads everything at once: every shard index (its crc32c and bounds), every inner
chunk (its crc32c, that it decodes, its size) and the images against the pixel hashes recorded at
extraction. A store made before tiles carried checksums is still checked for what it has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from cellgap.core.progress import progress_bar
from cellgap.featurestore.errors import StoreError
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import array_at, read_all, shard_file, shard_layout
from cellgap.featurestore.store.info import array_paths
from cellgap.featurestore.store.reader import FeatureStore
from cellgap.featurestore.store.shardfile import EMPTY, ShardLayout, check_chunk, read_shard_index
from cellgap.featurestore.store.writer import pixel_hashes

HASH_BATCH = 64  # tiles whose images are hashed together


@dataclass(frozen=True)
class Damage:
    """One damaged tile (or, with tile None, a whole array) and what is wrong with it."""

    array: str
    tile: int | None
    problem: str


@dataclass
class VerifyReport:
    location: str
    tiles: int
    done: int
    arrays: int = 0
    chunks: int = 0
    checksummed: bool = True  # every tile array carries per-tile checksums
    damage: list[Damage] = field(default_factory=list)

    @property
    def damaged_tiles(self) -> list[int]:
        return sorted({d.tile for d in self.damage if d.tile is not None})

    @property
    def ok(self) -> bool:
        return not self.damage


def verify_store(store: FeatureStore, progress: bool = True) -> VerifyReport:
    """Check every array of `store`; damage is collected, never raised, so one report names all of it."""
    report = VerifyReport(store.location, store.n_tiles, 0)
    try:
        done = store.done
    except Exception as error:  # noqa: BLE001 (whatever zarr raises for a damaged chunk)
        report.damage.append(Damage(layout.DONE, None, f"cannot be read ({error})"))
        done = np.zeros(store.n_tiles, bool)
    report.done = int(done.sum())
    paths = array_paths(store)
    root = store._root
    with progress_bar(store.n_tiles * len(paths), f"verify {store.location}", unit="chunk",
                      enabled=progress) as bar:
        for path in paths:
            array = array_at(store.group, path)
            report.arrays += 1
            found = shard_layout(array) if root is not None else None
            if root is not None and found is not None:
                report.checksummed &= found.checksummed
                _verify_shards(root, path, array, found, done, report, bar)
            else:
                if array.shards is not None:
                    report.checksummed = False  # what zarr-python checks is all there is
                _verify_with_zarr(path, array, report, bar)
        _verify_pixels(store, done, report, bar)
    return report


def _verify_shards(root: Path, path: str, array: zarr.Array, shard: ShardLayout, done: np.ndarray,
                   report: VerifyReport, bar) -> None:
    n_tiles = array.shape[0]
    for number in range(layout.shard_count(n_tiles, shard.shard_tiles)):
        tiles = layout.shard_range(number, n_tiles, shard.shard_tiles)
        file = shard_file(root, array, number)
        bar.update(len(tiles))
        if not file.exists():
            for tile in tiles:
                if done[tile]:
                    report.damage.append(Damage(path, tile, f"{file.name} is missing"))
            continue
        data = np.memmap(file, dtype=np.uint8, mode="r")
        try:
            index, _ = read_shard_index(file, data, shard)
        except StoreError as error:
            report.damage += [Damage(path, tile, str(error).split(": ", 1)[-1]) for tile in tiles]
            continue
        codec = None if shard.raw else shard.codec()
        for position, tile in enumerate(tiles):
            offset, length = (int(v) for v in index[position])
            if index[position, 0] == EMPTY:
                if done[tile]:
                    report.damage.append(Damage(path, tile, "marked done but its chunk was never written"))
                continue
            report.chunks += 1
            problem = _chunk_problem(file, data[offset : offset + length], tile, shard, codec)
            if problem:
                report.damage.append(Damage(path, tile, problem))


def _chunk_problem(file: Path, chunk: np.ndarray, tile: int, shard: ShardLayout, codec) -> str | None:
    try:
        body = check_chunk(file, chunk, tile) if shard.checksummed else chunk
    except StoreError:
        return "fails its checksum"
    if codec is not None:
        try:
            body = np.frombuffer(codec.decode(body), np.uint8)
        except Exception as error:  # noqa: BLE001 (any codec failure means the bytes are damaged)
            return f"cannot be decoded ({error})"
    if body.size != shard.tile_bytes:
        return f"holds {body.size} bytes, not {shard.tile_bytes}"
    return None


def _verify_with_zarr(path: str, array: zarr.Array, report: VerifyReport, bar) -> None:
    """Arrays the direct reader does not take (small per-tile arrays, other layouts, remote stores)."""
    step = int(array.chunks[0])
    for start in range(0, array.shape[0], step):
        stop = min(start + step, array.shape[0])
        try:
            np.asarray(array[start:stop])
            report.chunks += 1
        except Exception as error:  # noqa: BLE001 (whatever zarr raises for a damaged chunk)
            report.damage += [Damage(path, tile, f"cannot be read ({error})") for tile in range(start, stop)]
        bar.update(stop - start)


def _verify_pixels(store: FeatureStore, done: np.ndarray, report: VerifyReport, bar) -> None:
    """Images of done tiles against the pixel hashes recorded when they were extracted."""
    algorithm = store.manifest.pixel_hash
    hash_path = layout.pixel_hash_path(algorithm)
    try:
        recorded = read_all(store.group, hash_path)
    except Exception as error:  # noqa: BLE001
        report.damage.append(Damage(hash_path, None, f"cannot be read ({error})"))
        return
    broken = {d.tile for d in report.damage if d.array == layout.IMAGE}
    tiles = [t for t in np.flatnonzero(done).tolist() if t not in broken]
    for start in range(0, len(tiles), HASH_BATCH):
        batch = np.array(tiles[start : start + HASH_BATCH])
        hashes = pixel_hashes(store.read_images(batch), algorithm)
        for tile in batch[np.any(hashes != recorded[batch], axis=1)].tolist():
            report.damage.append(Damage(layout.IMAGE, tile, f"pixels differ from their recorded {algorithm} hash"))


def format_report(report: VerifyReport, names: list[str] | None = None, limit: int = 50) -> str:
    """One line per damaged tile (up to `limit`), then the verdict."""
    lines = []
    for damage in report.damage[:limit]:
        where = "whole array" if damage.tile is None else f"tile {damage.tile}"
        if damage.tile is not None and names is not None and damage.tile < len(names):
            where += f" ({names[damage.tile]})"
        lines.append(f"{where}: {damage.array}: {damage.problem}")
    if len(report.damage) > limit:
        lines.append(f"... and {len(report.damage) - limit} more (see --json)")
    checks = "per-tile checksums" if report.checksummed else "no per-tile checksums (store made before them)"
    summary = (f"{report.location}: {report.arrays} arrays, {report.chunks} chunks, {report.done}/{report.tiles} "
               f"tiles done; {checks}")
    if report.ok:
        lines.append(f"{summary}: no damage found")
    else:
        lines.append(f"{summary}: {len(report.damaged_tiles)} damaged tiles; extract the data set again into a "
                     "new store")
    return "\n".join(lines)
