"""Reading whole-slide images (OpenSlide and tifffile), finding the tissue, and the grid of regions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellgap.featurestore.slides.grid import Roi, plan_regions
from cellgap.featurestore.slides.reader import SlideError, open_slide
from cellgap.featurestore.slides.tissue import detect_tissue

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "consep_train" / "images"


def write_pyramid(path: Path, image: np.ndarray, mpp: float | None = 0.25, levels: int = 3, ome: bool = False) -> Path:
    """A tiled pyramidal TIFF as scanners write them (OpenSlide's generic-tiff), or an OME-TIFF with sub-resolutions."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tiff:
        if ome:
            metadata = {"axes": "YXS", **({"PhysicalSizeX": mpp, "PhysicalSizeY": mpp} if mpp else {})}
            tiff.write(image, tile=(256, 256), photometric="rgb", compression="zlib", subifds=levels - 1,
                       metadata=metadata)
            level = image
            for _ in range(levels - 1):
                level = np.asarray(Image.fromarray(level).reduce(2))
                tiff.write(level, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
            return path
        level = image
        for i in range(levels):
            resolution = {} if mpp is None else {"resolution": (1e4 / mpp / 2**i, 1e4 / mpp / 2**i),
                                                 "resolutionunit": "CENTIMETER"}
            tiff.write(level, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=0 if i == 0 else 1,
                       **resolution)
            level = np.asarray(Image.fromarray(level).reduce(2))
    return path


def he_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Real CoNSeP patches tiled into a field when ../shared/data is here, else a synthetic H&E-coloured field."""
    from PIL import Image

    files = sorted(SHARED.glob("*.jpg"))[: (height // 256 + 1) * (width // 256 + 1)] if SHARED.is_dir() else []
    if files:
        tiles = [np.asarray(Image.open(f).convert("RGB"))[:256, :256] for f in files]
        per_row = width // 256 + 1
        rows = [np.concatenate(tiles[r * per_row:(r + 1) * per_row], axis=1)
                for r in range(len(tiles) // per_row)]
        field = np.concatenate(rows, axis=0)
        if field.shape[0] >= height and field.shape[1] >= width:
            return np.ascontiguousarray(field[:height, :width])
    from cellgap.featurestore.datasets.synthetic import make_image

    return make_image(seed, height, width).image


def test_a_pyramidal_tiff_reads_through_openslide_with_its_pixel_size(tmp_path):
    image = he_like(700, 900)
    slide = open_slide(write_pyramid(tmp_path / "s.tif", image))
    with slide:
        assert slide.backend_name == "openslide" and slide.mpp == pytest.approx(0.25)
        assert slide.dimensions == (900, 700)
        np.testing.assert_array_equal(slide.read(100, 50, 300, 200), image[50:250, 100:400])
        half = slide.read(100, 50, 150, 100, downsample=2.0)  # read from level 1, the pyramid's own 2x
        assert half.shape == (100, 150, 3)
        expected = image[50:250, 100:400].reshape(100, 2, 150, 2, 3).mean(axis=(1, 3))
        assert np.abs(half.astype(float) - expected).mean() < 6
        outside = slide.read(800, 600, 200, 200)  # sticks out right and below: white glass there
        np.testing.assert_array_equal(outside[:100, :100], image[600:700, 800:900])
        assert (outside[100:, :] == 255).all() and (outside[:, 100:] == 255).all()


def test_an_ome_tiff_reads_through_tifffile_when_openslide_cannot(tmp_path):
    image = he_like(600, 520)
    with open_slide(write_pyramid(tmp_path / "s.ome.tif", image, mpp=0.5, ome=True)) as slide:
        assert slide.backend_name == "tifffile" and slide.mpp == pytest.approx(0.5)
        np.testing.assert_array_equal(slide.read(10, 20, 256, 300), image[20:320, 10:266])
        assert slide.info.levels == 3
        assert slide.read(0, 0, 130, 150, downsample=4.0).shape == (150, 130, 3)


def test_the_pixel_size_can_be_given_and_bad_files_are_named(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tif", he_like(300, 300), mpp=None, levels=1)
    with open_slide(path) as slide:
        assert slide.mpp is None
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5
    (tmp_path / "notes.svs").write_text("not a slide")
    with pytest.raises(SlideError, match="notes.svs"):
        open_slide(tmp_path / "notes.svs")
    with pytest.raises(FileNotFoundError, match="missing.svs"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(path, mpp=-1)


def test_a_thumbnail_of_a_slide_without_pyramid_is_read_in_blocks(tmp_path):
    image = he_like(1100, 1300)
    with open_slide(write_pyramid(tmp_path / "flat.tif", image, levels=1)) as slide:
        thumbnail, downsample = slide.thumbnail(max_side=260, block=64)
    assert thumbnail.shape == (220, 260, 3) and downsample == pytest.approx(5.0)
    coarse = image[:1100, :1300].reshape(220, 5, 260, 5, 3).mean(axis=(1, 3))
    assert np.abs(thumbnail.astype(float) - coarse).mean() < 8


def test_tissue_is_found_on_glass_and_holds_on_a_slide_of_tissue_only():
    glass = np.full((200, 300, 3), 242, np.uint8)
    glass += np.random.default_rng(0).integers(0, 4, glass.shape, dtype=np.uint8)  # scanner noise
    tissue = he_like(200, 300)
    slide = glass.copy()
    slide[40:160, 60:200] = tissue[40:160, 60:200]
    mask = detect_tissue(slide, downsample=16.0)
    truth = np.zeros((200, 300), bool)
    truth[40:160, 60:200] = True
    assert (mask.mask & truth).sum() / truth.sum() > 0.9  # the tissue, holes in it closed
    assert (mask.mask & ~truth).sum() < 0.02 * (~truth).sum()  # not the glass
    assert mask.covers(100 * 16, 100 * 16, 16, 16) and not mask.covers(0, 0, 50 * 16, 30 * 16)
    assert detect_tissue(tissue, downsample=1.0).fraction > 0.8  # all tissue: Otsu's cut is held low
    assert detect_tissue(glass, downsample=1.0).fraction < 0.01


def test_regions_hold_every_point_once_and_follow_the_roi():
    regions = plan_regions(2500, 1800, 2.0, 512, 64)
    assert len(regions) == 3 * 2
    rng = np.random.default_rng(1)
    for x, y in rng.uniform(0, [1250, 900], (500, 2)):
        assert sum(region.holds(x, y) for region in regions) == 1
    assert regions[0].window == (-64, -64, 640, 640)
    roi = plan_regions(2500, 1800, 1.0, 512, 64, roi=Roi.parse("1000,200,600,300"))
    assert [(r.x, r.y, r.width, r.height) for r in roi] == [(1000, 200, 512, 300), (1512, 200, 88, 300)]
    with pytest.raises(ValueError, match="roi"):
        Roi.parse("1,2,3")
    with pytest.raises(ValueError, match="outside"):
        plan_regions(100, 100, 1.0, 64, 8, roi=Roi(200, 0, 10, 10))
