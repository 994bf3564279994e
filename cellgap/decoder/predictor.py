"""A trained run, ready to predict: from stored features, from tiles, or from images of any size.

The encoder is rebuilt from the run's manifest (same weights source, layers and preprocessing) and
its weights must hash to what the store recorded, so a prediction never mixes features of another
encoder with the decoder.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from cellgap.core.stages import StageClock, measured
from cellgap.decoder.checkpoint import BEST, Checkpoint, load_checkpoint
from cellgap.decoder.errors import CheckpointError, PredictionError
from cellgap.decoder.inference import TileMaps, forward_probabilities, instances_of, split_tiles
from cellgap.decoder.pixelsize import run_mpp
from cellgap.decoder.postprocess import Instances
from cellgap.decoder.sliding import blend_windows, pad_to_tile
from cellgap.featurestore.encoders.encoder import EncoderSettings, FrozenEncoder, pick_device
from cellgap.featurestore.encoders.precision import UNKNOWN
from cellgap.featurestore.errors import ManifestMismatchError
from cellgap.featurestore.store.manifest import Manifest, encoder_differences


def encoder_settings_for(manifest: Manifest, weights: Path | None = None) -> EncoderSettings:
    """The settings that rebuild the encoder a store was extracted with."""
    description = manifest.encoder
    source = description.weights_source
    layers = ",".join(str(layer.index) for layer in description.layers)
    common = {"name": description.name, "layers": layers, "tile_size": manifest.dataset.tile_size,
              "input_size": description.input_size if description.resize else None,
              "precision": "auto" if description.precision == UNKNOWN else description.precision}
    if weights is not None:
        return EncoderSettings(weights=weights, **common)
    if source.startswith("random:seed="):
        return EncoderSettings(pretrained=False, seed=int(source.split("=", 1)[1]), **common)
    if source.startswith("file:"):
        path = Path(source[len("file:"):])
        if not path.is_file():
            raise CheckpointError(f"the run's encoder weights {path} are not here; pass --weights PATH")
        return EncoderSettings(weights=path, **common)
    return EncoderSettings(pretrained=True, **common)


def model_name(checkpoint: Checkpoint) -> str:
    """The run's `name` from its training config, else `encoder-dataset` (not the folder: runs are often `run`)."""
    name = checkpoint.info.get("config", {}).get("name")
    if name:
        return str(name)
    record = checkpoint.manifest.dataset
    folder = PurePath(record.path.replace("\\", "/")).name if record.format != "synthetic" else ""
    dataset = folder or record.format
    encoder = checkpoint.manifest.encoder.name.replace("/", "_").replace(":", "_")
    return f"{encoder}-{dataset}"


class Predictor:
    """Decoder (+ encoder when images are given) with the run's post-processing."""

    def __init__(self, checkpoint: Checkpoint, run_dir: Path, device: torch.device,
                 encoder: FrozenEncoder | None = None) -> None:
        self.checkpoint, self.run_dir, self.device, self.encoder = checkpoint, run_dir, device, encoder
        digest = hashlib.sha256((run_dir / BEST).read_bytes()).hexdigest()[:10]
        self.model_id = f"{model_name(checkpoint)}@{digest}"

    @classmethod
    def from_run(cls, run_dir: Path, *, device: str = "auto", weights: Path | None = None,
                 with_encoder: bool = True) -> Predictor:
        run_dir = check_run_dir(run_dir)
        torch_device = pick_device(device)
        checkpoint = load_checkpoint(run_dir / BEST, torch_device)
        encoder = None
        if with_encoder:
            encoder = FrozenEncoder(encoder_settings_for(checkpoint.manifest, weights), device=torch_device)
            check_same_encoder(checkpoint.manifest, encoder, str(run_dir))
        return cls(checkpoint, run_dir, torch_device, encoder)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.checkpoint.class_names

    @property
    def tile_size(self) -> int:
        return self.checkpoint.spec.tile_size

    @property
    def mpp(self) -> float:
        """Microns per pixel the model was trained at: the pixel size slides are read at for it."""
        return run_mpp(self.checkpoint.manifest)

    def describe(self) -> dict[str, Any]:
        info = self.checkpoint.info
        manifest = self.checkpoint.manifest
        return {
            "model_id": self.model_id,
            "run": str(self.run_dir),
            "encoder": manifest.encoder.model_dump(mode="json"),
            "layers": [layer.model_dump(mode="json") for layer in manifest.encoder.layers],
            "classes": {str(i + 1): name for i, name in enumerate(self.class_names)},
            "tile_size": self.tile_size,
            "decoder": {"parameters": info.get("parameters"), "gflops_per_tile": info.get("gflops_per_tile"),
                        "spec": self.checkpoint.spec.model_dump(mode="json")},
            "training": {"epoch": info.get("epoch"), "metric": info.get("metric"), "valid": info.get("valid")},
            "postprocess": self.checkpoint.postprocess.model_dump(mode="json"),
            "store_manifest": manifest.model_dump(mode="json"),
        }

    def maps_from_features(self, features: list[torch.Tensor], images: torch.Tensor) -> list[TileMaps]:
        """Maps of tiles whose features are already computed (B,C,h,w per layer; images (B,3,T,T) in [0,1])."""
        return split_tiles(forward_probabilities(self.checkpoint.model, features, images))

    def maps_of_tiles(self, tiles: np.ndarray, clock: StageClock | None = None) -> list[TileMaps]:
        """Maps of (B,T,T,3) uint8 tiles: encoder, then decoder (each timed on `clock` when given)."""
        if self.encoder is None:
            raise PredictionError("this predictor was loaded without its encoder; it can only use stored features")
        with measured(clock, "encode"):
            batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
            features = self.encoder(batch)
            order = [layer.name for layer in self.encoder.description.layers]
            features = [features[order.index(name)] for name in self.checkpoint.layer_names]
        with measured(clock, "decode"):
            images = batch.permute(0, 3, 1, 2).float().div_(255.0)
            return self.maps_from_features(features, images)

    def predict_batch(self, images: list[np.ndarray]) -> list[Instances]:
        """Instances of tiles of exactly tile_size x tile_size, run together on the model."""
        return list(self.iter_batch(images))

    def iter_batch(self, images: list[np.ndarray]) -> Iterator[Instances]:
        """`predict_batch` one tile at a time after the shared forward pass: a caller can hand each tile's
        cells on while the next tiles are still being post-processed."""
        for image in images:
            check_image(image)
            if image.shape[:2] != (self.tile_size, self.tile_size):
                raise PredictionError(f"tile is {image.shape[0]}x{image.shape[1]}, expected "
                                      f"{self.tile_size}x{self.tile_size} (use predict_image for other sizes)")
        if not images:
            return
        for maps in self.maps_of_tiles(np.stack(images)):
            yield instances_of(maps, self.checkpoint.postprocess)

    def predict_image(self, image: np.ndarray, batch_size: int = 8) -> Instances:
        """Instances of an image of any size (sliding windows when larger than a tile, padding when smaller)."""
        return instances_of(self.maps_of_image(image, batch_size), self.checkpoint.postprocess)

    def maps_of_image(self, image: np.ndarray, batch_size: int = 8, clock: StageClock | None = None) -> TileMaps:
        """Full-image maps of an image of any size, before post-processing."""
        check_image(image)
        padded, (height, width) = pad_to_tile(image, self.tile_size)

        def windows(tiles: np.ndarray) -> list[TileMaps]:
            return self.maps_of_tiles(tiles, clock=clock)

        if padded.shape[:2] == (self.tile_size, self.tile_size):
            maps = windows(padded[None])[0]
        else:
            maps = blend_windows(padded, self.tile_size, windows, batch_size=batch_size)
        if (height, width) != padded.shape[:2]:
            maps = TileMaps(maps.sm1[:, :height, :width], maps.ddm[:, :height, :width],
                            None if maps.classes is None else maps.classes[:, :height, :width])
        return maps


def check_run_dir(run_dir: Path) -> Path:
    """A run directory with a trained model, or a CheckpointError saying what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    if not (run_dir / BEST).is_file():
        raise CheckpointError(f"{run_dir}: no {BEST} (train a model with `cellgap train --out {run_dir}` first)")
    return run_dir


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise PredictionError(f"expected an RGB image (H,W,3) uint8, got shape {shape} dtype {dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise PredictionError("the image is empty")


def check_same_encoder(manifest: Manifest, encoder: FrozenEncoder, where: str) -> None:
    """The rebuilt encoder must be the one the decoder was trained on (weights, layers, preprocessing)."""
    diff = encoder_differences(manifest.encoder, encoder.description)
    if diff:
        raise ManifestMismatchError(f"{where}: the encoder built for prediction differs from the one the decoder was "
                                    f"trained on ({', '.join(diff[:4])}); pass the original --weights")
