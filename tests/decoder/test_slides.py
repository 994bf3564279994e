"""`predict --slides`: nuclei stitched across regions once and whole, QuPath outputs, resume after kill -9."""
from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellgap.decoder.predictor import Predictor
from cellgap.decoder.slides import SlideSettings, predict_slides, run_mpp
from tests.featurestore.test_slides import he_like, write_pyramid

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CELLGAP, *args], capture_output=True, text=True, timeout=600)


def slide_of(path: Path, image: np.ndarray, run: Path, mpp_factor: float = 1.0) -> Path:
    """A pyramidal TIFF whose full resolution is the run's own pixel size times `mpp_factor`."""
    predictor = Predictor.from_run(run, with_encoder=False)
    return write_pyramid(path, image, mpp=run_mpp(predictor.checkpoint.manifest) * mpp_factor)


def test_nuclei_cut_by_region_borders_are_kept_once_and_whole(tmp_path, trained_run, monkeypatch):
    """Each region's window gets the maps a perfect model would give for what it sees (nuclei cut at the
    window's border included); the stitched slide must hold the same nuclei as the whole image."""
    from cellgap.decoder.inference import TileMaps, instances_of
    from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot
    from cellgap.featurestore.datasets.synthetic import make_image
    from cellgap.featurestore.slides.grid import plan_regions

    field = make_image(5, 900, 1100)
    path = slide_of(tmp_path / "field.tif", field.image, trained_run)
    settings = SlideSettings(region_size=256, tissue=False, labels=True)
    margin = 128
    windows = iter([r.window for r in plan_regions(1100, 900, 1.0, 256, margin)])
    config = TargetConfig(magnification=20)

    def ideal(instances, classes):
        targets = compute_targets(instances, classes, config)
        return TileMaps(one_hot(targets.sm1, 3), targets.ddm, one_hot(targets.classes, 4))

    def crop(array, x, y, w, h):
        out = np.zeros((h, w), array.dtype)
        x0, y0, x1, y1 = max(0, x), max(0, y), min(array.shape[1], x + w), min(array.shape[0], y + h)
        out[y0 - y:y1 - y, x0 - x:x1 - x] = array[y0:y1, x0:x1]
        return out

    def maps_of_image(self, pixels, batch_size=8, clock=None):
        x, y, w, h = next(windows)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(1100, x + w), min(900, y + h)
        assert np.array_equal(pixels[y0 - y:y1 - y, x0 - x:x1 - x], field.image[y0:y1, x0:x1])  # read where planned
        return ideal(crop(field.instances, x, y, w, h), crop(field.classes, x, y, w, h))

    monkeypatch.setattr(Predictor, "maps_of_image", maps_of_image)
    [summary] = predict_slides(trained_run, [path], tmp_path / "out", settings, progress=False)
    import zarr

    stitched = np.asarray(zarr.open_array(str(tmp_path / "out" / "field.labels.zarr"), mode="r")[:])
    predictor = Predictor.from_run(trained_run, with_encoder=False)
    whole = instances_of(ideal(field.instances, field.classes), predictor.checkpoint.postprocess).labels
    ids = np.unique(stitched)[1:]
    assert summary.cells == len(ids) == int(whole.max()) > 150 and summary.regions == 20
    matched, whole_nuclei = {}, []
    for cell in range(1, int(whole.max()) + 1):
        mask = whole == cell
        found, overlap = np.unique(stitched[mask], return_counts=True)
        best = int(found[np.argmax(overlap)])
        union = mask.sum() + (stitched == best).sum() - overlap.max()
        whole_nuclei.append(overlap.max() / union if best else 0.0)
        assert best not in matched or whole_nuclei[-1] < 0.5, f"nucleus {best} stands for two"
        matched[best] = cell
    # Post-processing is not strictly local (thinning of a contour network, watershed ties), so a window
    # can split a dense clump the whole image keeps as one: allowed for a few, never for many.
    assert np.mean(np.array(whole_nuclei) > 0.9) >= 0.97, sorted(whole_nuclei)[:10]


@pytest.fixture(scope="module")
def finding_run(tmp_path_factory) -> Path:
    """A run that finds nuclei (ImageNet features, 4 epochs on synthetic tiles), made by the real commands."""
    root = tmp_path_factory.mktemp("finding")
    for command in (["extract", "--dataset", "synthetic:24", "--encoder", "imagenet/efficientnet_lite0", "--store",
                     str(root / "s.zarr"), "--no-progress"],
                    ["train", "--store", str(root / "s.zarr"), "--out", str(root / "run"), "--epochs", "4",
                     "--no-progress"]):
        done = run_cli(*command)
        assert done.returncode == 0, done.stderr[-2000:]
    return root / "run"


@pytest.fixture(scope="module")
def he_slide(tmp_path_factory, finding_run) -> Path:
    from cellgap.featurestore.datasets.synthetic import make_image

    return slide_of(tmp_path_factory.mktemp("slides") / "he.tif", make_image(8, 900, 1000).image, finding_run)


def outputs_of(folder: Path) -> tuple[bytes, bytes]:
    return gzip.decompress((folder / "he.geojson.gz").read_bytes()), (folder / "he.cells.csv").read_bytes()


def test_predict_slides_writes_qupath_detections_the_table_and_pictures(tmp_path, finding_run, he_slide):
    out = tmp_path / "out"
    done = run_cli("predict", "--run", str(finding_run), "--slides", str(he_slide), "--out", str(out),
                   "--region-size", "256", "--labels", "--no-progress")
    assert done.returncode == 0, done.stderr
    collection = json.loads(gzip.decompress((out / "he.geojson.gz").read_bytes()))
    features = collection["features"]
    with open(out / "he.cells.csv") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((out / "he.json").read_text())
    assert collection["type"] == "FeatureCollection" and len(features) == len(rows) == summary["cells"] > 20
    assert len({f["id"] for f in features}) == len(features)
    for feature in features:
        assert feature["properties"]["objectType"] == "detection"
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert {"area", "area_um2", "score", "class_confidence"} <= set(feature["properties"]["measurements"])
    xs = [float(r["centroid_x"]) for r in rows]
    ys = [float(r["centroid_y"]) for r in rows]
    assert 0 <= min(xs) and max(xs) < 1000 and 0 <= min(ys) and max(ys) < 900
    import zarr

    labels = np.asarray(zarr.open_array(str(out / "he.labels.zarr"), mode="r")[:])
    assert labels.shape == (900, 1000)
    assert set(np.unique(labels)[1:].tolist()) <= {int(r["id"]) for r in rows}
    from PIL import Image

    assert Image.open(out / "he.overlay.png").size[0] == 1000 and (out / "he.tissue.png").is_file()
    assert not (out / ".he.parts").exists()


def test_a_killed_slide_resumes_to_identical_outputs(tmp_path, finding_run, he_slide):
    args = ["--run", str(finding_run), "--slides", str(he_slide), "--region-size", "192", "--no-progress"]
    reference = run_cli("predict", *args, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = subprocess.Popen([CELLGAP, "predict", *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out / ".he.parts"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(parts.glob("*.json.gz"))) < 3:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(list(parts.glob("*.json.gz")))
    assert 3 <= finished and not (out / "he.geojson.gz").exists()
    resumed = run_cli("predict", *args, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "he.json").read_text())["resumed"] >= finished
    assert outputs_of(out) == outputs_of(tmp_path / "ref")


def test_slides_without_a_pixel_size_or_readable_pixels_are_one_line_errors(tmp_path, trained_run):
    flat = write_pyramid(tmp_path / "nompp.tif", he_like(300, 300), mpp=None, levels=1)
    done = run_cli("predict", "--run", str(trained_run), "--slides", str(flat), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "--mpp" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.svs").write_bytes(b"\x00" * 100)
    done = run_cli("predict", "--run", str(trained_run), "--slides", str(tmp_path / "junk.svs"), "--out",
                   str(tmp_path / "o"))
    assert done.returncode == 2 and "junk.svs" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = run_cli("predict", "--run", str(trained_run), "--slides", str(flat), "--roi", "1,2,3", "--out",
                   str(tmp_path / "o"))
    assert done.returncode == 2 and "--roi" in done.stderr


def test_a_slide_at_twice_the_resolution_is_read_down_to_the_run(tmp_path, finding_run):
    """A 40x slide for a model at half its resolution: regions are read at the model's pixel size and the
    outputs come back in the slide's full-resolution coordinates."""
    image = he_like(800, 800)
    path = slide_of(tmp_path / "fine.tif", image, finding_run, mpp_factor=0.5)
    [summary] = predict_slides(finding_run, [path], tmp_path / "out", SlideSettings(region_size=256, labels=True),
                               progress=False)
    assert summary.scale == 2.0
    import zarr

    labels = zarr.open_array(str(tmp_path / "out" / "fine.labels.zarr"), mode="r")
    assert labels.shape == (800, 800)
    with open(tmp_path / "out" / "fine.cells.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and max(float(r["centroid_x"]) for r in rows) > 400  # level-0 coordinates, not the model's
    areas = [(float(r["area"]), float(r["area_um2"])) for r in rows]
    assert all(um2 == pytest.approx(px * 0.25 * run_mpp_of(finding_run) ** 2, rel=1e-3) for px, um2 in areas)


def run_mpp_of(run: Path) -> float:
    return run_mpp(Predictor.from_run(run, with_encoder=False).checkpoint.manifest)


MEMORY_BOUND_MIB = 3072  # the slide's level 0 alone is 2575 MiB as RGB and 3433 MiB as int32 labels


@pytest.mark.slow
def test_a_30k_slide_is_predicted_within_a_memory_bound(tmp_path, finding_run):
    """A 30000 x 30000 slide, mostly glass, with its full-resolution label map: the process's peak
    resident memory stays under MEMORY_BOUND_MIB, so nothing holds the slide or its labels whole."""
    from cellgap.featurestore.slides.synthetic import write_synthetic_slide

    path = write_synthetic_slide(tmp_path / "big.tif", 30000, 30000, run_mpp_of(finding_run), tissue_fraction=0.002)
    measure = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
               "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    done = subprocess.run([sys.executable, "-c", measure, CELLGAP, "predict", "--run", str(finding_run), "--slides",
                           str(path), "--out", str(tmp_path / "out"), "--labels", "--no-progress"],
                          capture_output=True, text=True, timeout=900)
    returncode, peak_kib = map(int, done.stdout.split()[-2:])
    assert returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "big.json").read_text())
    assert summary["cells"] > 50 and summary["width"] == summary["height"] == 30000
    assert peak_kib / 1024 < MEMORY_BOUND_MIB, f"peak {peak_kib / 1024:.0f} MiB"


def test_bench_slides_times_every_stage_of_a_real_prediction(tmp_path, finding_run):
    done = run_cli("bench", "slides", "--run", str(finding_run), "--size", "1024", "--tissue", "0.5",
                   "--region-size", "512", "--json", str(tmp_path / "bench.json"))
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = json.loads((tmp_path / "bench.json").read_text())
    assert row["cells"] > 20 and row["width"] == 1024
    assert set(row["stage_seconds"]) == {"read", "encode", "decode", "postprocess", "write"}
    assert all(seconds > 0 for seconds in row["stage_seconds"].values())
    assert row["s_per_mm2"] == pytest.approx(row["seconds"] / row["tissue_mm2"], rel=0.02)
    assert "nuclei/s" in done.stdout and "slowest" in done.stdout


def test_slides_spread_over_dask_workers_give_the_outputs_of_a_local_run(tmp_path, finding_run, he_slide):
    import shutil

    second = tmp_path / "he2.tif"
    shutil.copy(he_slide, second)
    args = ["--run", str(finding_run), "--region-size", "256", "--no-progress"]
    # each of 2 local workers gets 1 of the 2 cores; a one-thread local run sums in the same order
    local = subprocess.run([CELLGAP, "predict", *args, "--slides", str(he_slide), "--out", str(tmp_path / "local")],
                           capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert local.returncode == 0, local.stderr
    spread = run_cli("predict", *args, "--slides", str(he_slide), str(second), "--out", str(tmp_path / "dask"),
                     "--workers", "2")
    assert spread.returncode == 0, spread.stderr
    assert outputs_of(tmp_path / "dask") == outputs_of(tmp_path / "local")
    def without_ids(path: Path) -> list[dict]:
        return [{**f, "id": None} for f in json.loads(gzip.decompress(path.read_bytes()))["features"]]

    # the same pixels under another name: the same nuclei, with ids of their own slide
    assert without_ids(tmp_path / "dask" / "he2.geojson.gz") == without_ids(tmp_path / "local" / "he.geojson.gz")
    assert [line.split(":")[0] for line in spread.stdout.splitlines()[:2]] == ["he", "he2"]
    refused = run_cli("predict", *args, "--images", str(he_slide), "--out", str(tmp_path / "x"), "--workers", "2")
    assert refused.returncode == 2 and "use them with --slides" in refused.stderr
