"""From the decoder's three maps to labelled nuclei: CISCA's marker watershed and class pooling.

Contours come from the directional distance maps (DDM), markers from the SM1 body cut along those
contours and eroded, and the watershed floods an elevation that mixes SM1 and the contours. Each
instance then takes the cell type whose SM2 probability, summed over its pixels, is highest. See
cisca.md section 4; the step numbers in the comments refer to it. About 12 ms per 256x256 tile on
one CPU core, well below the decoder's forward pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage as ndi
from skimage.measure import label as label_components
from skimage.morphology import remove_small_holes, remove_small_objects, skeletonize
from skimage.segmentation import relabel_sequential, watershed

from cellgap.decoder.kernels import FootprintShape, directional_kernels, footprint, magnification_defaults

PresetName = Literal["pannuke", "conic", "cytodark0-20x", "cytodark0-40x"]

_EIGHT = np.ones((3, 3), dtype=bool)

_BY_MAGNIFICATION: dict[int, dict[str, Any]] = {
    40: {"erosion_radius": 2, "min_residue": 3, "struct_radius": 5, "mask_se": "square", "min_size": 80},
    20: {"erosion_radius": 1, "min_residue": 2, "struct_radius": 3, "mask_se": "disk", "min_size": 24},
}
# (magnification, minimum object size) tuned by the reference on each validation split.
_PRESETS: dict[str, tuple[int, int]] = {
    "pannuke": (40, 50),
    "conic": (20, 26),
    "cytodark0-20x": (20, 20),
    "cytodark0-40x": (40, 80),
}


class PostprocessConfig(BaseModel):
    """Post-processing parameters; sizes follow the magnification unless given explicitly.

    Defaults are the reference's (cisca.md section 4). `PostprocessConfig(magnification=20)` takes
    every 20x size; `preset("conic")` also sets the data set's tuned minimum object size.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    magnification: Literal[20, 40] = 40
    foreground_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="on P(boundary) + P(body)")
    threshold: float = Field(0.57, gt=0.0, le=1.0, description="on the DDM contour map")
    erosion_radius: int = Field(2, ge=0, description="disk that shrinks body pieces into markers")
    min_residue: int = Field(3, ge=0, description="markers smaller than this (px) are dropped")
    struct_radius: int = Field(5, ge=1, description="side of the square that widens the contour skeleton")
    mask_se: FootprintShape = Field("square", description="radius-1 opening of the watershed mask")
    distmap_weight: float = Field(0.5, ge=0.0, le=1.0, description="share of the contours in the elevation")
    min_size: int = Field(80, ge=0, description="objects smaller than this (px) are removed")
    max_fill_hole: int = Field(5, ge=0, description="background holes below this size join the mask")
    marker_merge_radius: int = Field(1, ge=0, description="markers this close are one marker; 0 = off")
    keep_small_cores: bool = Field(
        True, description="a body piece whose eroded core is under min_residue px is its own marker (False: dropped)"
    )
    kernel_size: int = Field(5, ge=3, description="side of the directional kernels")

    @model_validator(mode="before")
    @classmethod
    def _sizes_from_magnification(cls, data: Any) -> Any:
        return magnification_defaults(data, _BY_MAGNIFICATION)

    @classmethod
    def preset(cls, name: str | None = None, magnification: int = 40, **overrides: Any) -> PostprocessConfig:
        """The reference parameters of a data set, or of a magnification when `name` is None."""
        if name is None:
            return cls(magnification=magnification, **overrides)
        if name not in _PRESETS:
            raise ValueError(f"unknown post-processing preset {name!r}; expected one of {sorted(_PRESETS)}")
        preset_magnification, min_size = _PRESETS[name]
        return cls(**{"magnification": preset_magnification, "min_size": min_size, **overrides})


@dataclass(frozen=True)
class Instances:
    """Nuclei of one tile.

    labels (H,W) int32, 0 = background, ids 1..n. classes (n,) int32: cell type of instance i+1,
    1..K; all 1 (a single "cell" type, as in the targets without a class map) when there is no class
    head. scores (n,) float32: the detection score, the mean foreground probability P(boundary) +
    P(body) over the instance, how sure the model is that a nucleus is there. confidences (n,)
    float32: the chosen type's share of the real classes' probability mass over the instance (the
    background channel left out, so it reads as "which type, given it is a nucleus"; 1 without a
    class head).
    """

    labels: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    confidences: np.ndarray

    def __len__(self) -> int:
        return int(self.classes.shape[0])

    def with_min_score(self, min_score: float) -> Instances:
        """Only the instances scored at least `min_score`, renumbered 1..m in their order."""
        keep = self.scores >= min_score
        if keep.all():
            return self
        lookup = np.zeros(len(self) + 1, dtype=np.int32)
        lookup[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        return Instances(labels=lookup[self.labels], classes=self.classes[keep], scores=self.scores[keep],
                         confidences=self.confidences[keep])

    def class_map(self) -> np.ndarray:
        """(H,W) uint8 cell type per pixel, 0 = background."""
        lookup = np.concatenate([[0], self.classes]).astype(np.uint8)
        return lookup[self.labels]


def postprocess(
    sm1_prob: np.ndarray,
    ddm: np.ndarray,
    class_prob: np.ndarray | None,
    config: PostprocessConfig,
) -> Instances:
    """Instances from one tile's maps: sm1_prob (3,H,W) softmax (boundary, body, background), ddm
    (4,H,W) in [-1,1] (h, v, tl, bl), class_prob (K+1,H,W) softmax with channel 0 = background, or None.
    """
    sm1_prob, ddm, class_prob = _check_maps(sm1_prob, ddm, class_prob)
    p_boundary, p_body, p_background = sm1_prob
    p_foreground = p_boundary + p_body
    foreground = p_foreground >= config.foreground_threshold  # 1
    contours = contour_map(ddm, foreground, config.kernel_size) >= config.threshold  # 2-5
    dist = -_blur3(np.where(contours, np.float32(0), foreground.astype(np.float32)))  # 6

    body = (p_body > p_boundary) & (p_body >= p_background)  # 7: body is the argmax
    if contours.any():
        skeleton = skeletonize(contours)
        body &= ~(contours & ndi.maximum_filter(skeleton, size=config.struct_radius))
    body = _drop_small_pieces(body, config.min_size / 4)
    markers = _markers(body, config)  # 8

    mask = p_foreground > p_background  # 9
    if config.max_fill_hole > 1:  # holes (4-connected background) under max_fill_hole px become cell
        mask = remove_small_holes(mask, max_size=config.max_fill_hole - 1, connectivity=1)
    se = footprint(config.mask_se, 1)
    mask = ndi.binary_dilation(ndi.binary_erosion(mask, se, border_value=1), se)

    w = config.distmap_weight  # 10
    elevation = (1.0 - w) * (255.0 - 255.0 * p_body) + w * 255.0 * (dist + 1.0)
    if markers.any():
        labels = watershed(elevation, markers, mask=mask, connectivity=2)  # 11
        labels = _remove_small_objects(labels.astype(np.int32, copy=False), config.min_size)  # 12
    else:
        labels = np.zeros(mask.shape, dtype=np.int32)
    classes, confidences = pool_classes(labels, class_prob)  # 13
    return Instances(labels=labels, classes=classes, scores=mean_per_instance(labels, p_foreground),
                     confidences=confidences)


def contour_map(ddm: np.ndarray, foreground: np.ndarray, kernel_size: int = 5) -> np.ndarray:
    """(H,W) float32 in [0,1]: how strongly the distance maps fall, across any direction; 0 off the foreground.

    Each map is cross-correlated with its own directional kernel, the response min-max scaled over
    the tile and inverted, and the four taken pixel-wise at their maximum (cisca.md section 4,
    steps 3-4). The reference first min-max scales each map over the tile (step 2); the kernels sum
    to 0 and the response is min-max scaled anyway, so that step changes nothing and is skipped.
    """
    kernels = directional_kernels(kernel_size)
    out = np.zeros(ddm.shape[1:], dtype=np.float32)
    for channel, kernel in zip(ddm, kernels):
        response = ndi.correlate(channel, kernel, mode="mirror")
        low, high = float(response.min()), float(response.max())
        if high > low:
            np.maximum(out, (high - response) * np.float32(1.0 / (high - low)), out=out)
    out[~foreground] = 0.0  # C - (1 - FG), clipped at 0
    return out


def _instance_pixels(labels: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(n, flat indices of the instances' pixels, their ids, pixels per instance 1..n)."""
    flat = labels.ravel()
    n = int(flat.max()) if flat.size else 0
    inside = np.flatnonzero(flat)  # cells cover a small part of a tile: sum over their pixels only
    ids = flat[inside]
    area = np.maximum(np.bincount(ids, minlength=n + 1)[1:], 1)
    return n, inside, ids, area


def mean_per_instance(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n,) float32: the mean of a (H,W) map over each instance 1..n."""
    n, inside, ids, area = _instance_pixels(labels)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    return (np.bincount(ids, weights=values.ravel()[inside], minlength=n + 1)[1:] / area).astype(np.float32)


def pool_classes(labels: np.ndarray, class_prob: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Class id (n,) int32 and its confidence (n,) float32 of each instance 1..n in `labels`.

    SM2 probabilities are summed over the instance's pixels and the argmax taken; when background
    (channel 0) wins, the best real class is taken instead, so every instance keeps a type. The
    confidence is that class's share of the real classes' summed probability. Without a class head
    every instance is type 1 with confidence 1.
    """
    n, inside, ids, _ = _instance_pixels(labels)
    if n == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
    if class_prob is None:
        return np.ones(n, dtype=np.int32), np.ones(n, dtype=np.float32)
    sums = np.stack(
        [np.bincount(ids, weights=channel.ravel()[inside], minlength=n + 1)[1:] for channel in class_prob], axis=1
    )  # (n, K+1)
    best = sums.argmax(axis=1)
    classes = np.where(best == 0, sums[:, 1:].argmax(axis=1) + 1, best).astype(np.int32)
    real = sums[:, 1:].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidences = np.where(real > 0, sums[np.arange(n), classes] / real, np.nan).astype(np.float32)
    return classes, confidences


def _markers(body: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Eroded body pieces plus the pieces that vanish under the erosion (so small cells keep a marker).

    With `keep_small_cores`, a piece whose core is too small to be kept (< `min_residue` px) also
    serves whole as its marker: the reference would drop it, losing cells whose core is 1-2 px.
    """
    pieces, n = ndi.label(body, structure=_EIGHT)
    if n == 0:
        return np.zeros(body.shape, dtype=np.int32)
    if config.erosion_radius > 0:
        core = ndi.binary_erosion(body, footprint("disk", config.erosion_radius), border_value=1)
        core_size = np.bincount(pieces[core], minlength=n + 1)
        smallest_core = config.min_residue if config.keep_small_cores else 1
        whole = core_size < smallest_core  # pieces that are their own marker
        whole[0] = False
        seeds = core | whole[pieces]
    else:
        seeds = body
    if config.marker_merge_radius > 0:  # dilate, label, erode back: seeds this close form one marker
        grown = ndi.maximum_filter(seeds, size=2 * config.marker_merge_radius + 1)
        markers = ndi.label(grown, structure=_EIGHT)[0] * seeds
    else:
        markers = ndi.label(seeds, structure=_EIGHT)[0]
    if config.min_residue > 1:
        markers = _without_small_labels(markers, config.min_residue)
    return markers.astype(np.int32, copy=False)


def _drop_small_pieces(mask: np.ndarray, min_size: float) -> np.ndarray:
    """`mask` without its 4-connected pieces smaller than `min_size` px."""
    if min_size <= 1 or not mask.any():
        return mask
    return remove_small_objects(mask, max_size=math.ceil(min_size) - 1, connectivity=1)


def _without_small_labels(labels: np.ndarray, min_size: float) -> np.ndarray:
    """Labels with fewer than `min_size` pixels set to 0 (a labelled map: skimage would warn on one label)."""
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _remove_small_objects(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop connected pieces and whole labels under `min_size` px, then renumber 1..n."""
    if min_size > 1:
        pieces = label_components(labels, background=0, connectivity=2)  # pieces of equal-id pixels
        labels = np.where(_without_small_labels(pieces, min_size) > 0, labels, 0)
        labels = _without_small_labels(labels, min_size)
    return relabel_sequential(labels)[0].astype(np.int32, copy=False)


def _blur3(image: np.ndarray) -> np.ndarray:
    """3x3 Gaussian blur with OpenCV's default sigma for that size: weights (1, 2, 1)/4, mirrored border."""
    weights = np.array([0.25, 0.5, 0.25], dtype=np.float32)
    return ndi.correlate1d(ndi.correlate1d(image, weights, axis=0, mode="mirror"), weights, axis=1, mode="mirror")


def _check_maps(
    sm1_prob: np.ndarray, ddm: np.ndarray, class_prob: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    sm1_prob = np.asarray(sm1_prob, dtype=np.float32)
    ddm = np.asarray(ddm, dtype=np.float32)
    if sm1_prob.ndim != 3 or sm1_prob.shape[0] != 3:
        raise ValueError(f"sm1_prob must be (3,H,W) (boundary, body, background), got {sm1_prob.shape}")
    if ddm.shape != (4, *sm1_prob.shape[1:]):
        raise ValueError(f"ddm must be (4,H,W) = (4, {sm1_prob.shape[1]}, {sm1_prob.shape[2]}), got {ddm.shape}")
    if class_prob is not None:
        class_prob = np.asarray(class_prob, dtype=np.float32)
        if class_prob.ndim != 3 or class_prob.shape[0] < 2 or class_prob.shape[1:] != sm1_prob.shape[1:]:
            raise ValueError(
                f"class_prob must be (K+1,H,W) with K >= 1 and H,W = {sm1_prob.shape[1:]}, got {class_prob.shape}"
            )
    return sm1_prob, ddm, class_prob
