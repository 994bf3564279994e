"""Batches straight from the store: background threads read ahead while the model works.

Reads are memory-mapped shard files (see featurestore.store.shardfile), so a batch costs little
more than a memmap gather. Tensors go to the device as stored (float16, or int8 codes with scales,
dequantised there), and augmentation runs on the device: D4 views of features, image and targets,
or a random stored view of the encoder's features.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from cellgap.core.views import ALL_VIEWS, apply_view
from cellgap.decoder.augment import jitter_stains, random_stain_factors, random_views, view_ddm
from cellgap.decoder.networks import channels_last
from cellgap.decoder.targets_cache import TargetCache
from cellgap.featurestore.store.reader import FeatureStore


@dataclass
class HostBatch:
    indices: np.ndarray
    views: list[str]
    stains: torch.Tensor | None  # (B,2,3) stain scale and shift for the image, or None
    features: list[tuple[np.ndarray, np.ndarray | None]]  # stored values and int8 scales, per layer
    images: np.ndarray
    sm1: np.ndarray | None
    ddm: np.ndarray | None
    classes: np.ndarray | None
    near: np.ndarray | None


@dataclass
class DeviceBatch:
    """features: (B,C,h,w) float per layer in network order; image (B,3,T,T) in [0,1]; targets or None;
    stored_images: the (B,T,T,3) uint8 tiles as read, before any augmentation (for outputs)."""

    indices: np.ndarray
    features: list[torch.Tensor]
    image: torch.Tensor
    sm1: torch.Tensor | None
    ddm: torch.Tensor | None
    classes: torch.Tensor | None
    weight: torch.Tensor | None
    stored_images: np.ndarray


class StoreBatches:
    """Epochs of batches over some tiles of a store."""

    def __init__(self, store: FeatureStore, layer_names: Sequence[str], indices: np.ndarray, batch_size: int, *,
                 targets: TargetCache | None = None, shuffle: bool = False, augment: str = "none", seed: int = 0,
                 device: torch.device = torch.device("cpu"), background_weight: float = 0.05, prefetch: int = 4,
                 threads: int = 2, stain_jitter: float = 0.0) -> None:
        if augment == "views" and len(store.views) < 2:
            from cellgap.decoder.errors import DecoderError

            raise DecoderError(f"{store.location}: --augment views needs a store extracted with --views flips or d4")
        self.store, self.layer_names, self.indices = store, list(layer_names), np.asarray(indices)
        self.batch_size, self.targets, self.shuffle, self.augment = batch_size, targets, shuffle, augment
        self.seed, self.device, self.background_weight = seed, device, background_weight
        self.prefetch, self.threads, self.stain_jitter = prefetch, threads, stain_jitter

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def _order(self, epoch: int) -> list[tuple[np.ndarray, list[str], torch.Tensor | None]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.indices) if self.shuffle else self.indices
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        batches = []
        for start in range(0, len(order), self.batch_size):
            chunk = np.sort(order[start : start + self.batch_size])  # sorted reads gather one block per shard
            if self.augment == "d4":
                views = random_views(len(chunk), generator, ALL_VIEWS)
            elif self.augment == "views":
                views = random_views(len(chunk), generator, self.store.views)
            else:
                views = ["identity"] * len(chunk)
            stains = random_stain_factors(len(chunk), self.stain_jitter, generator) if self.stain_jitter > 0 else None
            batches.append((chunk, views, stains))
        return batches

    def _read(self, indices: np.ndarray, views: list[str], stains: torch.Tensor | None) -> HostBatch:
        stored_view = self.augment == "views"
        features = []
        for name in self.layer_names:
            if not stored_view:
                features.append(self.store.read_stored_features(indices, name))
                continue
            values, scales = None, None
            for view in sorted(set(views)):
                rows = np.array([i for i, v in enumerate(views) if v == view])
                part, part_scale = self.store.read_stored_features(indices[rows], name, view=view)
                if values is None:
                    values = np.empty((len(indices),) + part.shape[1:], part.dtype)
                    scales = None if part_scale is None else np.empty((len(indices),) + part_scale.shape[1:], part_scale.dtype)
                values[rows] = part
                if scales is not None:
                    scales[rows] = part_scale
            assert values is not None  # every batch holds at least one view
            features.append((values, scales))
        targets = self.targets.read(indices) if self.targets is not None else None
        return HostBatch(indices, views, stains, features, self.store.read_images(indices),
                         targets.sm1 if targets else None, targets.ddm if targets else None,
                         targets.classes if targets else None, targets.near if targets else None)

    def _to_device(self, host: HostBatch) -> DeviceBatch:
        device = self.device
        move = (lambda a: torch.from_numpy(np.ascontiguousarray(a)).pin_memory().to(device, non_blocking=True)) \
            if device.type == "cuda" else (lambda a: torch.from_numpy(np.ascontiguousarray(a)))
        features = []
        for values, scales in host.features:
            tensor = move(values).float()
            if scales is not None:
                tensor = tensor * move(scales).float()[:, :, None, None]
            features.append(channels_last(tensor))
        image = move(host.images).permute(0, 3, 1, 2).float().div_(255.0)  # NHWC storage: already channels-last
        if host.stains is not None:  # the image skip only: stored features saw the tile as scanned
            image = channels_last(jitter_stains(image, host.stains))
        sm1 = ddm = classes = weight = None
        if host.sm1 is not None:
            sm1, ddm, classes = move(host.sm1).long(), move(host.ddm).float(), move(host.classes).long()
            near = move(host.near)
            weight = torch.where(near, torch.ones((), device=device), torch.full((), self.background_weight, device=device))
        if self.augment in ("d4", "views") and any(v != "identity" for v in host.views):
            image, sm1, ddm, classes, weight, features = self._apply_views(host.views, image, sm1, ddm, classes, weight,
                                                                          features)
        return DeviceBatch(host.indices, features, image, sm1, ddm, classes, weight, host.images)

    def _apply_views(self, views, image, sm1, ddm, classes, weight, features):
        """Transform each sample by its view; stored-view features are already in that view's frame."""
        def per_sample(tensor, fn):
            return None if tensor is None else torch.stack([fn(t, v) for t, v in zip(tensor, views)])

        def spatial(t, v):
            return apply_view(t, v, axes=(-2, -1)).contiguous()
        image = per_sample(image, spatial)
        sm1, classes, weight = per_sample(sm1, spatial), per_sample(classes, spatial), per_sample(weight, spatial)
        ddm = per_sample(ddm, lambda t, v: view_ddm(t, v).contiguous())
        if self.augment == "d4":
            features = [channels_last(per_sample(f, spatial)) for f in features]
        return channels_last(image), sm1, ddm, classes, weight, features

    def epoch(self, epoch: int = 0) -> Iterator[DeviceBatch]:
        """Batches of one epoch, read `prefetch` batches ahead in background threads."""
        plan = self._order(epoch)
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="cellgap-loader") as pool:
            pending: deque[Future] = deque()
            position = 0
            while position < len(plan) or pending:
                while position < len(plan) and len(pending) < self.prefetch:
                    pending.append(pool.submit(self._read, *plan[position]))
                    position += 1
                yield self._to_device(pending.popleft().result())
