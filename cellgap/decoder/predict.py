"""`cellgap predict`: a run's predictions for a store split or for image files, in the folder layout."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cellgap.core.atomic import folder_replaced
from cellgap.core.limits import MAX_IMAGE_PIXELS
from cellgap.core.progress import progress_bar
from cellgap.core.stages import StageClock
from cellgap.decoder.errors import PredictionError
from cellgap.decoder.image_pipeline import predict_files
from cellgap.decoder.inference import instances_of
from cellgap.decoder.loader import StoreBatches
from cellgap.decoder.outputs import write_class_names, write_prediction
from cellgap.decoder.predictor import Predictor, check_run_dir
from cellgap.featurestore.datasets.imageio import IMAGE_SUFFIXES, check_image_size
from cellgap.featurestore.store.reader import open_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictSummary:
    out: Path
    images: int
    cells: int

    def lines(self) -> list[str]:
        return [f"{self.out}: {self.images} images, {self.cells} cells; labels/ (folder layout), geojson/, cells/, "
                f"overlays/"]


def predict_store(run_dir: Path, store_path: str, split: str | None, out: Path, *, device: str = "auto",
                  batch_size: int = 8, progress: bool = True, min_score: float = 0.0,
                  predictor: Predictor | None = None) -> PredictSummary:
    """Predict tiles of a store from their stored features (the store must come from the run's encoder);
    cells with a detection score below `min_score` are left out of every output. A `predictor` already
    loaded from `run_dir` is used as it is."""
    predictor = predictor or Predictor.from_run(run_dir, device=device, with_encoder=False)
    store = open_store(store_path, expect_encoder=predictor.checkpoint.manifest.encoder)
    indices = store.indices(split)
    if len(indices) == 0:
        raise PredictionError(f"{store_path}: no completed tiles{'' if split is None else f' in split {split!r}'}")
    batches = StoreBatches(store, predictor.checkpoint.layer_names, indices, batch_size, device=predictor.device)
    write_class_names(out, predictor.class_names)
    cells = 0
    with progress_bar(len(indices), "predict", unit="tile", enabled=progress) as bar:
        for batch in batches.epoch(0):
            maps_of_batch = predictor.maps_from_features(batch.features, batch.image)
            for maps, index, image in zip(maps_of_batch, batch.indices, batch.stored_images):
                found = instances_of(maps, predictor.checkpoint.postprocess).with_min_score(min_score)
                write_prediction(out, store.names[int(index)], image, found, predictor.class_names)
                cells += len(found)
            bar.update(len(batch.indices))
    return PredictSummary(out, len(indices), cells)


def image_files(path: Path) -> list[Path]:
    """Image files to predict: a file, a folder of images, or a folder with an images/ subfolder."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PredictionError(f"{path}: no such image file or folder")
    folder = path / "images" if (path / "images").is_dir() else path
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PredictionError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def predict_images(run_dir: Path, images: Path, out: Path, *, device: str = "auto", weights: Path | None = None,
                   batch_size: int = 8, progress: bool = True, min_score: float = 0.0,
                   max_pixels: int = MAX_IMAGE_PIXELS, overwrite: bool = False,
                   clock: StageClock | None = None, predictor: Predictor | None = None) -> PredictSummary:
    """Predict image files of any size up to `max_pixels` each, encoding them on the fly with the run's encoder.

    Every file's size is checked from its header before anything is predicted. The outputs are written to a
    temporary folder beside `out` that replaces `out` only when every image succeeded; a non-empty `out` is
    refused unless `overwrite`, and then replaced as a whole, so it never mixes new outputs with old ones."""
    check_run_dir(run_dir)
    files = image_files(images)
    check_output_folder(out, overwrite)
    for path in files:
        check_image_size(path, max_pixels)
    predictor = predictor or Predictor.from_run(run_dir, device=device, weights=weights)
    with folder_replaced(out) as partial, progress_bar(len(files), "predict", unit="image", enabled=progress) as bar:
        write_class_names(partial, predictor.class_names)
        cells = predict_files(predictor, files, partial, batch_size=batch_size, min_score=min_score,
                              max_pixels=max_pixels, on_image=lambda: bar.update(1), clock=clock)
    return PredictSummary(out, len(files), cells)


def check_output_folder(out: Path, overwrite: bool) -> None:
    """`out` must be a folder that is absent or empty, or `overwrite` must say that it may be replaced."""
    if out.exists() and not out.is_dir():
        raise PredictionError(f"{out}: --out is a file, not a folder")
    if out.is_dir() and not overwrite and any(out.iterdir()):
        raise PredictionError(f"{out}: the output folder is not empty; pass --overwrite to replace it, "
                              "or choose another --out")
