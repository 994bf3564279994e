"""Image files predicted as a pipeline: tiles of many files in one forward pass, reading and writing beside it.

Predicting a folder of tiles one file at a time ran the encoder on batches of one and left it idle
while each file was read, post-processed and written. Here a reader thread keeps the next files
decoded, files of exactly one tile are stacked into batches across files, larger files go through
the sliding window as before, and a second thread post-processes and writes each file while the
model runs on the next batch. Memory stays bounded: a few batches are read ahead or in writing.
"""
from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellgap.core.stages import StageClock, measured
from cellgap.decoder.inference import TileMaps, instances_of
from cellgap.decoder.outputs import write_prediction
from cellgap.decoder.predictor import Predictor
from cellgap.featurestore.datasets.imageio import read_image

IN_FLIGHT = 2  # batches post-processed and written at once, beyond the one the model runs on


@dataclass(frozen=True)
class _Loaded:
    name: str
    image: np.ndarray


def predict_files(predictor: Predictor, files: list[Path], out: Path, *, batch_size: int, min_score: float,
                  max_pixels: int, on_image: Callable[[], None] = lambda: None,
                  clock: StageClock | None = None) -> int:
    """Predict every file into `out` (the folder layout); returns the number of cells written."""
    tile = predictor.tile_size
    cells = 0

    def finish(done: list[tuple[_Loaded, TileMaps]]) -> int:
        count = 0
        for loaded, maps in done:
            with measured(clock, "postprocess"):
                found = instances_of(maps, predictor.checkpoint.postprocess).with_min_score(min_score)
            with measured(clock, "write"):
                write_prediction(out, loaded.name, loaded.image, found, predictor.class_names)
            count += len(found)
            on_image()
        return count

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="predict-post") as post:
        writing: deque[concurrent.futures.Future[int]] = deque()

        def hand_on(done: list[tuple[_Loaded, TileMaps]]) -> None:
            nonlocal cells
            writing.append(post.submit(finish, done))
            while len(writing) > IN_FLIGHT:
                cells += writing.popleft().result()

        batch: list[_Loaded] = []
        for loaded in _read_ahead(files, max_pixels, 2 * batch_size, clock):
            if loaded.image.shape[:2] != (tile, tile):
                hand_on([(loaded, predictor.maps_of_image(loaded.image, batch_size, clock=clock))])
                continue
            batch.append(loaded)
            if len(batch) == batch_size:
                hand_on(list(zip(batch, predictor.maps_of_tiles(np.stack([b.image for b in batch]), clock=clock))))
                batch = []
        if batch:
            hand_on(list(zip(batch, predictor.maps_of_tiles(np.stack([b.image for b in batch]), clock=clock))))
        while writing:
            cells += writing.popleft().result()
    return cells


def _read_ahead(files: list[Path], max_pixels: int, ahead: int, clock: StageClock | None) -> Iterator[_Loaded]:
    """The files decoded in a thread, up to `ahead` files before the one handed out."""
    def load(path: Path) -> _Loaded:
        with measured(clock, "read"):
            return _Loaded(path.stem, read_image(path, max_pixels))

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="predict-read") as reader:
        pending: deque[concurrent.futures.Future[_Loaded]] = deque()
        upcoming = iter(files)
        for path in upcoming:
            pending.append(reader.submit(load, path))
            if len(pending) > ahead:
                break
        while pending:
            loaded = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(reader.submit(load, following))
            yield loaded
