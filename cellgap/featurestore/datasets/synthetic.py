"""Seeded H&E-like tiles with exact instance and class maps: the demo's data and the tests' data.

The tissue is composed in optical density (Beer-Lambert) from a haematoxylin and an eosin
concentration map: pink fibrous stroma with pale clefts and white fat/lumen gaps, and purple nuclei
of up to six classes that differ in size, shape, stain density and chromatin texture. Nuclei are
placed in clusters so that many touch or overlap; a later nucleus occludes an earlier one, so the
instance map is a clean partition in which every instance is one 4-connected component.

Everything random comes from one `numpy.random.default_rng(seed)` per call: the same arguments
give bit-identical output.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# Class id k is named CLASS_NAMES[k - 1]; a tile with K classes uses the first K (the commonest first).
CLASS_NAMES: tuple[str, ...] = ("tumour", "lymphocyte", "stromal", "plasma", "neutrophil", "necrotic")

MIN_AREA = 15  # px; an instance left smaller than this after occlusion is dropped
TYPICAL_DENSITY = (25.0, 45.0)  # nuclei per 256x256 when the caller does not ask for a number
_REFERENCE_AREA = 256.0 * 256.0
_MAX_COVER = 0.42  # crowded tiles shrink nuclei so that they cover at most this fraction
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)

# Optical density of one unit of stain per RGB channel (typical H&E reference vectors).
_HAEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062])
_EOSIN = np.array([0.2159, 0.8012, 0.5581])


@dataclass(frozen=True)
class SyntheticTile:
    """One generated field: image (H,W,3) uint8 RGB, instances (H,W) int32, classes (H,W) uint8.

    `instances` is 0 on background and 1..n (contiguous) on nuclei; `classes` is 0 exactly on
    background and the instance's class id 1..K on every one of its pixels.
    """

    image: np.ndarray
    instances: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True)
class _Look:
    """Size (px, at full scale), shape, stain and texture of one nucleus class."""

    radius: tuple[float, float]  # semi-major axis range; lobe radius for segmented nuclei
    aspect: tuple[float, float]  # minor / major axis ratio range
    wobble: float  # amplitude of the low-frequency radial perturbation
    lobes: int  # > 1: a curved chain of overlapping round lobes
    haem: float  # haematoxylin concentration
    rim: float  # extra haematoxylin along the boundary (nuclear membrane)
    fine: float  # fine chromatin texture, as a fraction of `haem`
    clumps: float  # coarse chromatin clumps, as a fraction of `haem`
    eosin: float  # eosin inside the nucleus (pink tinge of dying cells)
    cytoplasm: tuple[float, float, float]  # (reach px, haematoxylin, eosin) of the cell body; reach 0: none
    spots: str  # "" | "nucleolus" | "clockface"
    weight: float  # relative frequency
    along_fibres: bool = False  # oriented with the stroma's fibres (spindle cells)


_NO_BODY = (0.0, 0.0, 0.0)
_LOOKS: tuple[_Look, ...] = (  # in CLASS_NAMES order
    # tumour: large, pale, irregular, vesicular (clumped chromatin, membrane, nucleolus), in nests
    _Look(radius=(10.0, 14.0), aspect=(0.62, 0.90), wobble=0.10, lobes=1, haem=0.55, rim=0.55, fine=0.15,
          clumps=0.9, eosin=0.10, cytoplasm=(6.0, 0.16, 0.40), spots="nucleolus", weight=0.35),
    # lymphocyte: small, round, dark, dense
    _Look(radius=(4.6, 6.0), aspect=(0.85, 1.00), wobble=0.04, lobes=1, haem=1.75, rim=0.25, fine=0.18,
          clumps=0.20, eosin=0.04, cytoplasm=_NO_BODY, spots="", weight=0.30),
    # stromal: elongated spindles along the fibres
    _Look(radius=(10.0, 15.0), aspect=(0.22, 0.34), wobble=0.05, lobes=1, haem=1.05, rim=0.25, fine=0.20,
          clumps=0.20, eosin=0.12, cytoplasm=_NO_BODY, spots="", weight=0.20, along_fibres=True),
    # plasma: oval, clock-face chromatin, purple cell body
    _Look(radius=(6.2, 7.8), aspect=(0.70, 0.85), wobble=0.05, lobes=1, haem=1.35, rim=0.45, fine=0.10,
          clumps=0.20, eosin=0.10, cytoplasm=(3.5, 0.32, 0.22), spots="clockface", weight=0.12),
    # neutrophil: three dark lobes in a curved chain, pale pink cell body
    _Look(radius=(3.3, 4.0), aspect=(0.90, 1.00), wobble=0.06, lobes=3, haem=1.45, rim=0.20, fine=0.10,
          clumps=0.10, eosin=0.30, cytoplasm=(3.5, 0.04, 0.42), spots="", weight=0.08),
    # necrotic: small, shrunken, very dark (pyknotic) and eosinophilic
    _Look(radius=(3.4, 4.8), aspect=(0.75, 1.00), wobble=0.18, lobes=1, haem=2.40, rim=0.00, fine=0.05,
          clumps=0.00, eosin=0.55, cytoplasm=_NO_BODY, spots="", weight=0.06),
)


def make_tile(seed: int, size: int = 256, n_classes: int = 3, n_nuclei: int | None = None) -> SyntheticTile:
    """A square tile; `n_nuclei=None` draws a typical density (about 25-45 per 256x256).

    A given `n_nuclei` is met approximately (occlusion can drop a few); crowded tiles (hundreds
    of nuclei) get proportionally smaller nuclei. `make_tile(s, n, k)` equals `make_image(s, n, n, k)`.
    """
    return _generate(seed, size, size, n_classes, n_nuclei)


def make_image(seed: int, height: int, width: int, n_classes: int = 3) -> SyntheticTile:
    """A field of any size with the tiles' density and look, for sliding-window inference tests."""
    return _generate(seed, height, width, n_classes, None)


def _generate(seed: int, height: int, width: int, n_classes: int, n_nuclei: int | None) -> SyntheticTile:
    if not 1 <= n_classes <= len(CLASS_NAMES):
        raise ValueError(f"n_classes must be in 1..{len(CLASS_NAMES)}, got {n_classes}")
    if min(height, width) < 16:
        raise ValueError(f"a synthetic field must be at least 16x16 px, got {height}x{width}")
    if n_nuclei is not None and n_nuclei < 0:
        raise ValueError(f"n_nuclei must be >= 0, got {n_nuclei}")
    rng = np.random.default_rng(seed)
    area = height * width
    target = n_nuclei if n_nuclei is not None else round(area / _REFERENCE_AREA * rng.uniform(*TYPICAL_DENSITY))
    looks = _LOOKS[:n_classes]
    weights = np.array([look.weight for look in looks])
    weights /= weights.sum()
    mean_area = sum(w * np.pi * look.radius[1] ** 2 * np.mean(look.aspect) * look.lobes * 0.8
                    for w, look in zip(weights, looks))
    scale = float(np.clip(np.sqrt(_MAX_COVER * area / max(target * mean_area, 1.0)), 0.5, 1.0))

    stroma = _Stroma(rng, height, width, with_gaps=scale > 0.9)
    layout = _Layout(rng, height, width, looks, weights, scale, stroma)
    layout.place(target)
    for _ in range(3):  # occlusion drops a few; top up towards the target
        layout.clean()
        missing = target - layout.count
        if missing <= max(0, round(0.03 * target)):
            break
        layout.place(missing)
    image = _render(rng, stroma, layout)
    return SyntheticTile(image=image, instances=layout.relabelled(), classes=layout.class_map())


class _Stroma:
    """The eosin field (fibres, loose and dense areas, clefts, fat/lumen gaps) and its grain."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, with_gaps: bool) -> None:
        self.height, self.width = height, width
        self.angle = rng.uniform(0.0, np.pi)  # main fibre direction
        density = _smooth_noise(rng, height, width, cell=56)
        fibres = _fibres(rng, height, width, self.angle)
        self.gaps = self._gaps(rng, with_gaps)
        dense = 1.0 / (1.0 + np.exp(-3.0 * (fibres + 1.1 - 0.3 * density)))  # clefts where fibres thin out
        eosin = dense * (0.5 + 0.12 * fibres + 0.1 * density)
        self.eosin = (eosin * (1.0 - self.gaps)).astype(np.float32)
        self.haem = ((0.05 + 0.02 * density) * (1.0 - self.gaps)).clip(0.0, None).astype(np.float32)

    def _gaps(self, rng: np.random.Generator, with_gaps: bool) -> np.ndarray:
        gaps = np.zeros((self.height, self.width), np.float32)
        count = rng.poisson(0.6 * self.height * self.width / _REFERENCE_AREA) if with_gaps else 0
        for _ in range(count):
            cy, cx = rng.uniform(0, self.height), rng.uniform(0, self.width)
            a, b = rng.uniform(9.0, 24.0), rng.uniform(7.0, 18.0)
            theta = rng.uniform(0.0, np.pi)
            y0, y1 = max(0, int(cy - a - 2)), min(self.height, int(cy + a + 3))
            x0, x1 = max(0, int(cx - a - 2)), min(self.width, int(cx + a + 3))
            y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
            x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
            u = x * np.cos(theta) + y * np.sin(theta)
            v = -x * np.sin(theta) + y * np.cos(theta)
            angle = np.arctan2(v, u)
            bump = 1.0 + sum(rng.normal(0.0, 0.06) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5))
            edge = (1.0 - np.hypot(u / a, v / b) / bump) * min(a, b)  # about px inside the edge
            np.maximum(gaps[y0:y1, x0:x1], np.clip(edge / 1.5, 0.0, 1.0), out=gaps[y0:y1, x0:x1])
        return gaps


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Unit-variance noise that varies over about `cell` px (cubic B-spline through a coarse grid)."""
    rows, cols = _spline_upsampler(height, cell), _spline_upsampler(width, cell)
    low = rng.standard_normal((rows.shape[1], cols.shape[1])).astype(np.float32)
    up = rows @ low @ cols.T
    return up / np.outer(np.linalg.norm(rows, axis=1), np.linalg.norm(cols, axis=1))


def _spline_upsampler(n: int, cell: int) -> np.ndarray:
    """(n, n // cell + 4) weights that interpolate a coarse grid onto n pixels."""
    knots = np.arange(n // cell + 4, dtype=np.float32)
    d = np.abs((np.arange(n, dtype=np.float32)[:, None] + 0.5) / cell + 1.5 - knots[None, :])
    return np.where(d < 1, 2 / 3 - d ** 2 + d ** 3 / 2, np.where(d < 2, (2 - d) ** 3 / 6, 0.0)).astype(np.float32)


def _fibres(rng: np.random.Generator, height: int, width: int, angle: float) -> np.ndarray:
    """Collagen-like bundles and fibrils along a gently wandering direction, about [-1, 1]."""
    warp = 9.0
    side = int(np.ceil(np.hypot(height, width))) + 2 * int(3 * warp) + 8
    noise = rng.standard_normal((side, side), dtype=np.float32)
    bundles = ndimage.gaussian_filter(noise, (2.0, 14.0))
    fibrils = ndimage.gaussian_filter(rng.standard_normal((side, side), dtype=np.float32), (0.7, 4.0))
    streaks = 0.75 * bundles / (bundles.std() + 1e-6) + 0.45 * fibrils / (fibrils.std() + 1e-6)
    bend_u = warp * _smooth_noise(rng, height, width, cell=72)
    bend_v = warp * _smooth_noise(rng, height, width, cell=72)
    y, x = np.mgrid[:height, :width].astype(np.float32) - np.array([height / 2, width / 2], np.float32)[:, None, None]
    c, s = np.cos(angle), np.sin(angle)
    u = x * c + y * s + bend_u + side / 2
    v = -x * s + y * c + bend_v + side / 2
    return ndimage.map_coordinates(streaks, [v, u], order=1, mode="mirror")


class _Layout:
    """Places nuclei (clustered, class-dependent) and paints the instance and spot maps."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, looks: tuple[_Look, ...],
                 weights: np.ndarray, scale: float, stroma: _Stroma) -> None:
        self.rng, self.height, self.width = rng, height, width
        self.looks, self.weights, self.scale, self.stroma = looks, weights, scale, stroma
        self.instances = np.zeros((height, width), np.int32)
        self.spots = np.zeros((height, width), np.float32)  # nucleolus / clock-face chromatin
        self.kind: list[int] = [0]  # class index (0-based) per painted id; id 0 is background
        self.shade: list[float] = [0.0]  # per-nucleus stain multiplier
        self.centres = np.empty((0, 3))  # (y, x, reach) of the nuclei still present
        self.ids: list[int] = []  # their painted ids, in painting order
        n_clusters = max(1, round(height * width / _REFERENCE_AREA * rng.uniform(2.0, 4.5)))
        self.clusters = [(rng.uniform(0, height), rng.uniform(0, width), rng.uniform(10.0, 26.0) / scale ** 0.5,
                          int(rng.choice(len(looks), p=weights))) for _ in range(n_clusters)]

    @property
    def count(self) -> int:
        return len(self.ids)

    def place(self, n: int) -> None:
        """Paint up to `n` more nuclei on top of those already there."""
        rng = self.rng
        for _ in range(n):
            cy, cx, sigma, home = self.clusters[rng.integers(len(self.clusters))]
            clustered = rng.random() < 0.75
            kind = home if clustered and rng.random() < 0.8 else int(rng.choice(len(self.looks), p=self.weights))
            look = self.looks[kind]
            a = rng.uniform(*look.radius) * self.scale
            b = a * rng.uniform(*look.aspect)
            reach = (a + b) / 2 * (1.6 if look.lobes > 1 else 1.0)
            spot = self._find_spot(cy, cx, sigma, clustered, reach)
            if spot is not None:
                self._paint(spot, kind, a, b, reach)

    def _find_spot(self, cy: float, cx: float, sigma: float, clustered: bool,
                   reach: float) -> tuple[float, float] | None:
        rng = self.rng
        known = self.centres
        for _ in range(4):
            if clustered:
                points = rng.normal((cy, cx), sigma, (32, 2))
            else:
                points = rng.uniform((0.0, 0.0), (self.height, self.width), (32, 2))
            points = points[((points >= 0) & (points < (self.height, self.width))).all(axis=1)]
            if len(points) == 0:
                continue
            iy, ix = points[:, 0].astype(int), points[:, 1].astype(int)
            points = points[self.stroma.gaps[iy, ix] < 0.3]
            if len(known):
                apart = np.hypot(points[:, None, 0] - known[None, :, 0], points[:, None, 1] - known[None, :, 1])
                points = points[(apart >= 0.78 * (reach + known[None, :, 2])).all(axis=1)]  # touch, not bury
            if len(points):
                return float(points[0, 0]), float(points[0, 1])
        return None

    def _paint(self, spot: tuple[float, float], kind: int, a: float, b: float, reach: float) -> None:
        rng, look = self.rng, self.looks[kind]
        cy, cx = spot
        half = int(np.ceil(max(a, reach) * (1.0 + 2.0 * look.wobble) + (2.2 * a if look.lobes > 1 else 0.0))) + 1
        y0, y1 = max(0, int(cy) - half), min(self.height, int(cy) + half + 1)
        x0, x1 = max(0, int(cx) - half), min(self.width, int(cx) + half + 1)
        y = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
        x = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
        theta = rng.uniform(0.0, np.pi)
        if look.along_fibres:
            theta = self.stroma.angle + rng.normal(0.0, 0.25)
        u = x * np.cos(theta) + y * np.sin(theta)
        v = -x * np.sin(theta) + y * np.cos(theta)
        if look.lobes > 1:
            step, bend = 1.35 * a, rng.uniform(-0.6, 0.6) * a
            offsets = np.arange(look.lobes) - (look.lobes - 1) / 2
            radial = np.min([np.hypot(u - step * k, v - bend * k * k) / a for k in offsets], axis=0)
        else:
            radial = np.hypot(u / a, v / b)
        phase = rng.uniform(0.0, 2 * np.pi, 4)
        amp = rng.normal(0.0, look.wobble, 4) / np.arange(2, 6)
        angle = np.arctan2(v, u)
        bump = 1.0 + sum(amp[k] * np.cos((k + 2) * angle + phase[k]) for k in range(4))
        depth = 1.0 - radial / bump
        mask = depth > 0
        if not mask.any():
            return
        new_id = len(self.kind)
        self.instances[y0:y1, x0:x1][mask] = new_id
        self.spots[y0:y1, x0:x1][mask] = self._spot_pattern(look, u, v, a, b, angle, depth)[mask]
        self.kind.append(kind)
        self.shade.append(float(rng.normal(1.0, 0.12)))
        self.centres = np.vstack([self.centres, [(cy, cx, reach)]])
        self.ids.append(new_id)

    def _spot_pattern(self, look: _Look, u: np.ndarray, v: np.ndarray, a: float, b: float,
                      angle: np.ndarray, depth: np.ndarray) -> np.ndarray:
        rng = self.rng
        if look.spots == "nucleolus":
            pu, pv = rng.uniform(-0.35, 0.35) * a, rng.uniform(-0.35, 0.35) * b
            size = rng.uniform(1.0, 1.6) * self.scale
            return np.exp(-((u - pu) ** 2 + (v - pv) ** 2) / (2 * size ** 2)).astype(np.float32)
        if look.spots == "clockface":
            spokes = np.clip(np.cos(6 * angle + rng.uniform(0, 2 * np.pi)), 0.0, None) ** 2
            return (0.6 * spokes * np.clip(1.0 - np.abs(depth - 0.3) / 0.25, 0.0, 1.0)).astype(np.float32)
        return np.zeros_like(depth, dtype=np.float32)

    def clean(self) -> None:
        """Keep each instance's largest 4-connected piece; drop instances under MIN_AREA px."""
        survivors: set[int] = set()
        for index, box in enumerate(ndimage.find_objects(self.instances), start=1):
            if box is None:
                continue
            window = self.instances[box]
            own = window == index
            pieces, n_pieces = ndimage.label(own, structure=_FOUR_CONNECTED)
            if n_pieces > 1:
                sizes = np.bincount(pieces.ravel())[1:]
                own &= pieces == 1 + int(np.argmax(sizes))
                window[(window == index) & ~own] = 0
            if own.sum() < MIN_AREA:
                window[own] = 0
            else:
                survivors.add(index)
        keep = [i for i, k in enumerate(self.ids) if k in survivors]
        self.ids = [self.ids[i] for i in keep]
        self.centres = self.centres[keep]
        self.spots[self.instances == 0] = 0.0

    def relabelled(self) -> np.ndarray:
        """The instance map with ids 1..n in painting order (a higher id occludes a lower one)."""
        table = np.zeros(len(self.kind), np.int32)
        table[self.ids] = np.arange(1, len(self.ids) + 1, dtype=np.int32)
        return table[self.instances]

    def class_map(self) -> np.ndarray:
        """Class id 1..K on every nucleus pixel, 0 on background."""
        lookup = np.array([0] + [k + 1 for k in self.kind[1:]], np.uint8)
        return lookup[self.instances]


def _render(rng: np.random.Generator, stroma: _Stroma, layout: _Layout) -> np.ndarray:
    """Compose stain concentrations into an RGB image (Beer-Lambert), with blur and noise."""
    height, width = stroma.height, stroma.width
    instances = layout.instances
    nucleus = instances > 0
    kinds = np.array(layout.kind, np.intp)
    looks = layout.looks
    per_kind = {name: np.array([getattr(look, name) for look in looks], np.float32)
                for name in ("haem", "rim", "fine", "clumps", "eosin")}
    shade = np.array(layout.shade, np.float32)
    k = kinds[instances]
    fine = ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), 0.8) * 2.2
    clumps = ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), 1.4)
    clumps = np.clip(clumps * 3.2 - 0.2, 0.0, None)
    edge = _distance_to_edge(instances)
    rim = np.exp(-edge / (1.3 * max(layout.scale, 0.6)))
    haem_level = per_kind["haem"][k] * shade[instances]
    chromatin = haem_level * (1.0 + per_kind["fine"][k] * fine + per_kind["clumps"][k] * (clumps - 0.35))
    nuclear_haem = np.clip(chromatin + per_kind["rim"][k] * rim + 1.3 * layout.spots, 0.05, None)

    body_haem, body_eosin, body = _cytoplasm(layout, k, nucleus)
    body *= 1.0 - stroma.gaps
    eosin = stroma.eosin * (1.0 - 0.85 * body) + body_eosin * body * (1.0 + 0.06 * fine)
    haem = stroma.haem + body_haem * body
    haem = np.where(nucleus, nuclear_haem, haem)
    eosin = np.where(nucleus, per_kind["eosin"][k] + 0.25 * eosin, eosin)

    blur = rng.uniform(0.6, 0.95)
    haem = ndimage.gaussian_filter(haem, blur) * rng.uniform(0.85, 1.15)
    eosin = ndimage.gaussian_filter(eosin, blur) * rng.uniform(0.8, 1.15)
    h_vec = _perturbed(rng, _HAEMATOXYLIN)
    e_vec = _perturbed(rng, _EOSIN)
    density = haem[..., None] * h_vec + eosin[..., None] * e_vec
    white = (255.0 * (1.0 - rng.uniform(0.0, 0.05, 3))).astype(np.float32)
    image = white * np.exp(-density) + 2.5 * rng.standard_normal((height, width, 3), dtype=np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _cytoplasm(layout: _Layout, kinds: np.ndarray, nucleus: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell bodies around the nuclei of classes that have one: (haematoxylin, eosin, weight) maps."""
    shape = nucleus.shape
    haem, eosin, weight = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for index, look in enumerate(layout.looks):
        reach, h, e = look.cytoplasm
        own = nucleus & (kinds == index)
        if reach == 0 or not own.any():
            continue
        w = np.clip(5.0 * ndimage.gaussian_filter(own.astype(np.float32), reach * layout.scale), 0.0, 1.0)
        haem += w * h
        eosin += w * e
        weight += w
    mixed = np.maximum(weight, 1e-6)
    return haem / mixed, eosin / mixed, np.minimum(weight, 1.0)


def _distance_to_edge(instances: np.ndarray) -> np.ndarray:
    """Distance (px) from each pixel to the nearest boundary between different labels."""
    edge = np.zeros(instances.shape, bool)
    rows, cols = instances[1:, :] != instances[:-1, :], instances[:, 1:] != instances[:, :-1]
    edge[1:, :] |= rows
    edge[:-1, :] |= rows
    edge[:, 1:] |= cols
    edge[:, :-1] |= cols
    return ndimage.distance_transform_edt(~edge).astype(np.float32)


def _perturbed(rng: np.random.Generator, vector: np.ndarray) -> np.ndarray:
    """A stain vector nudged per seed (batch-to-batch stain variation), unit length."""
    nudged = np.clip(vector + rng.normal(0.0, 0.03, 3), 0.02, None)
    return (nudged / np.linalg.norm(nudged)).astype(np.float32)
