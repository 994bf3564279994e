"""Prediction: from a store, from images of any size (sliding windows), outputs, and bad inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cellgap.decoder.errors import CheckpointError, PredictionError
from cellgap.decoder.inference import TileMaps
from cellgap.decoder.predictor import Predictor
from cellgap.decoder.sliding import blend_windows, window_weight
from cellgap.featurestore.errors import ManifestMismatchError

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CELLGAP, *args], capture_output=True, text=True, timeout=600)


def test_blending_reproduces_a_map_exactly_where_windows_agree():
    """Windows that all see the same global map blend back to that map (weights normalise everywhere)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (600, 700, 3), dtype=np.uint8)
    truth = rng.random((3, 600, 700)).astype(np.float32)
    origins = []

    def windows_of(batch):
        maps = []
        for window in batch:
            where = np.argwhere((image[..., 0] == window[0, 0, 0]) & (image[..., 1] == window[0, 0, 1]))
            row, col = next((r, c) for r, c in where if np.array_equal(image[r:r + 256, c:c + 256], window))
            origins.append((row, col))
            maps.append(TileMaps(truth[:, row:row + 256, col:col + 256], truth[:1].repeat(4, 0)[:, row:row + 256, col:col + 256], None))
        return maps

    blended = blend_windows(image, 256, windows_of, batch_size=4)
    np.testing.assert_allclose(blended.sm1, truth, rtol=1e-5, atol=1e-6)
    assert (0, 0) in origins and (344, 444) in origins  # windows flush with the far edges
    assert window_weight(256).min() > 0


def test_predict_image_of_600x700_finds_the_cells_of_the_whole_image_once(trained_run):
    """The predictor's own windowing, blending and post-processing, fed ideal maps per window (a 2-epoch
    model finds too few cells to tell): the same cells as post-processing ideal maps of the whole image."""
    from cellgap.core.tiling import tile_origins
    from cellgap.decoder.inference import instances_of
    from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot
    from cellgap.featurestore.datasets.synthetic import make_image

    predictor = Predictor.from_run(trained_run)
    field = make_image(11, 600, 700)
    config = TargetConfig(magnification=20)

    def ideal_maps(instances, classes):
        targets = compute_targets(instances, classes, config)
        return TileMaps(one_hot(targets.sm1, 3), targets.ddm, one_hot(targets.classes, 4))

    origins = iter(tile_origins(600, 700, 256, stride=128))
    predictor.maps_of_tiles = lambda batch, clock=None: [
        ideal_maps(field.instances[r:r + 256, c:c + 256], field.classes[r:r + 256, c:c + 256])
        for _, (r, c) in zip(batch, origins)]
    found = predictor.predict_image(field.image)
    whole = instances_of(ideal_maps(field.instances, field.classes), predictor.checkpoint.postprocess)
    assert found.labels.shape == (600, 700) and len(found) == len(whole) > 100
    assert np.array_equal(np.unique(found.labels)[1:], np.arange(1, len(found) + 1))  # sequential, no gaps
    assert np.array_equal(found.labels > 0, whole.labels > 0)


def test_small_images_are_padded_and_cropped(trained_run):
    predictor = Predictor.from_run(trained_run)
    image = np.full((100, 180, 3), 200, np.uint8)
    assert predictor.predict_image(image).labels.shape == (100, 180)


def test_predict_store_then_evaluate(tmp_path, trained_run, conv_store):
    out = tmp_path / "pred"
    result = run_cli("predict", "--run", str(trained_run), "--store", str(conv_store), "--split", "all", "--out", str(out))
    assert result.returncode == 0, result.stderr
    labels = sorted((out / "labels").glob("*.npy"))
    assert len(labels) == 10 and (out / "classes.json").exists()
    assert len(list((out / "geojson").glob("*.geojson"))) == 10
    assert sorted(p.name for p in (out / "overlays").glob("*.png"))[:1] == ["legend.png"]
    assert len(list((out / "overlays").glob("*.png"))) == 11  # one per tile and the legend
    first = np.load(labels[0])
    assert first.shape == (256, 256, 2)
    geojson = json.loads(next((out / "geojson").glob("*.geojson")).read_text())
    assert geojson["type"] == "FeatureCollection"
    metrics = tmp_path / "m.json"
    result = run_cli("evaluate", "--gt", f"store:{conv_store}", "--pred", f"folder:{out}", "--json", str(metrics))
    assert result.returncode == 0, result.stderr
    values = json.loads(metrics.read_text())
    assert values["n_images"] == 10 and values["instance"]["pq"] is not None


def test_min_score_leaves_out_the_cells_the_model_doubts(tmp_path, trained_run, conv_store, monkeypatch):
    import csv

    from cellgap.cli import main
    from cellgap.decoder import predict
    from cellgap.decoder.postprocess import Instances

    def three_cells(maps, config):  # the tiny run finds little: give every tile cells of known scores
        labels = np.zeros(maps.sm1.shape[1:], np.int32)
        labels[10:20, 10:20], labels[40:50, 40:50], labels[80:90, 80:90] = 1, 2, 3
        return Instances(labels, np.ones(3, np.int32), np.array([0.9, 0.3, 0.6], np.float32),
                         np.ones(3, np.float32))

    monkeypatch.setattr(predict, "instances_of", three_cells)
    out = tmp_path / "kept"
    assert main(["predict", "--run", str(trained_run), "--store", str(conv_store), "--split", "all", "--out", str(out),
                 "--no-progress", "--min-score", "0.5"]) == 0
    rows = [row for path in sorted((out / "cells").glob("*.csv")) for row in csv.DictReader(path.open())]
    assert len(rows) == 2 * 10 and {round(float(row["score"]), 3) for row in rows} == {0.9, 0.6}
    assert {int(row["id"]) for row in rows} == {1, 2}  # renumbered
    first = np.load(sorted((out / "labels").glob("*.npy"))[0])
    assert set(np.unique(first[..., 0])) == {0, 1, 2}
    refused = run_cli("predict", "--run", str(trained_run), "--store", str(conv_store), "--out", str(tmp_path / "x"),
                      "--min-score", "1.5")
    assert refused.returncode == 2 and "[0, 1]" in refused.stderr


def test_predict_images_encodes_on_the_fly(tmp_path, trained_run):
    from skimage import io

    from cellgap.featurestore.datasets.synthetic import make_image

    folder = tmp_path / "images"
    folder.mkdir()
    io.imsave(folder / "big.png", make_image(3, 300, 400).image, check_contrast=False)
    out = tmp_path / "pred"
    result = run_cli("predict", "--run", str(trained_run), "--images", str(folder), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert np.load(out / "labels" / "big.npy").shape == (300, 400, 2)
    assert (out / "geojson" / "big.geojson").exists() and (out / "cells" / "big.csv").exists()


def test_store_of_another_encoder_is_refused(tmp_path, trained_run, vit_store):
    with pytest.raises(ManifestMismatchError, match="holds features of encoder 'vit_tiny'"):
        from cellgap.decoder.predict import predict_store

        predict_store(trained_run, str(vit_store), None, tmp_path / "p", progress=False)
    result = run_cli("predict", "--run", str(trained_run), "--store", str(vit_store), "--out", str(tmp_path / "q"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "vit_tiny" in result.stderr


def test_bad_inputs_are_one_line_errors(tmp_path, trained_run):
    def one_line(result, fragment):
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert fragment in result.stderr

    one_line(run_cli("predict", "--run", str(tmp_path / "nope"), "--images", str(tmp_path), "--out", str(tmp_path / "o")),
             "run directory not found")
    from skimage import io

    good = tmp_path / "good"
    good.mkdir()
    io.imsave(good / "tile.png", np.full((64, 64, 3), 180, np.uint8), check_contrast=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    one_line(run_cli("predict", "--run", str(broken), "--images", str(good), "--out", str(tmp_path / "o")),
             "not a usable cellgap checkpoint")
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "fake.png").write_text("not a png")
    one_line(run_cli("predict", "--run", str(trained_run), "--images", str(images), "--out", str(tmp_path / "o")),
             "cannot read image")
    one_line(run_cli("train", "--store", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r")), "no store here")
    with pytest.raises(PredictionError, match="RGB image"):
        Predictor.from_run(trained_run).predict_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Predictor.from_run(tmp_path)


def test_cells_cut_by_window_borders_are_found_once():
    """Windows whose maps describe cells cut at their borders (as a real model sees them) blend into maps
    that post-process to the same cells as maps of the whole image: nothing doubled along window seams."""
    from cellgap.core.tiling import tile_origins
    from cellgap.decoder.inference import instances_of, postprocess_preset
    from cellgap.decoder.targets import TargetConfig, compute_targets, one_hot
    from cellgap.featurestore.datasets.synthetic import make_image

    field = make_image(21, 600, 700)
    config = TargetConfig(magnification=20)

    def ideal_maps(instances, classes):
        targets = compute_targets(instances, classes, config)
        return TileMaps(one_hot(targets.sm1, 3), targets.ddm, one_hot(targets.classes, 4))

    origins = iter(tile_origins(600, 700, 256, stride=128))  # the order blend_windows asks for them

    def windows_of(batch):
        return [ideal_maps(field.instances[r:r + 256, c:c + 256], field.classes[r:r + 256, c:c + 256])
                for _, (r, c) in zip(batch, origins)]

    post = postprocess_preset("synthetic", 20)
    windowed = instances_of(blend_windows(field.image, 256, windows_of, batch_size=4), post)
    whole = instances_of(ideal_maps(field.instances, field.classes), post)
    assert len(windowed) == len(whole) > 200
    matched = set()
    for label in range(1, len(windowed) + 1):
        mask = windowed.labels == label
        ids, overlap = np.unique(whole.labels[mask], return_counts=True)
        best = ids[np.argmax(overlap)]
        union = mask.sum() + (whole.labels == best).sum() - overlap.max()
        assert best != 0 and overlap.max() / union > 0.5 and best not in matched
        matched.add(best)


def test_the_model_id_names_the_run_by_its_config_not_its_folder(trained_run):
    import dataclasses

    from cellgap.decoder.checkpoint import load_checkpoint
    from cellgap.decoder.predictor import BEST, model_name

    assert trained_run.name == "run"  # the folder name people give runs; it says nothing in /v1/models
    assert Predictor.from_run(trained_run, with_encoder=False).model_id.startswith("convnext_atto-synthetic@")
    checkpoint = load_checkpoint(trained_run / BEST)
    named = dataclasses.replace(checkpoint, info={**checkpoint.info,
                                                  "config": {**checkpoint.info["config"], "name": "consep-lite0"}})
    assert model_name(named) == "consep-lite0"


def test_a_run_name_that_cannot_be_an_id_is_refused(tmp_path, conv_store):
    from cellgap.decoder.errors import DecoderError
    from cellgap.decoder.training.config import load_train_config

    with pytest.raises(DecoderError, match="'name'"):
        load_train_config(None, {"store": str(conv_store), "out": tmp_path / "r", "name": "my run/1"})


def test_tile_files_batched_across_files_give_what_each_file_alone_gives(tmp_path, trained_run):
    """Tiles of many files share forward passes (the order of files mixed with larger ones); every file's labels
    are those of predicting it on its own."""
    from PIL import Image

    from cellgap.decoder.predict import predict_images
    from cellgap.featurestore.datasets.synthetic import make_image, make_tile

    folder = tmp_path / "images"
    folder.mkdir()
    images = {f"t{i}": make_tile(40 + i).image for i in range(7)}
    images["wide"] = make_image(9, 256, 400).image  # between tiles: a sliding-window file
    images["t7"] = make_tile(60).image
    for name, image in images.items():
        Image.fromarray(image).save(folder / f"{name}.png")
    predictor = Predictor.from_run(trained_run)
    summary = predict_images(trained_run, folder, tmp_path / "out", batch_size=3, progress=False, predictor=predictor)
    assert summary.images == 9
    for name, image in images.items():
        alone = predictor.predict_image(image)
        stored = np.load(tmp_path / "out" / "labels" / f"{name}.npy")
        assert np.array_equal(stored[..., 0], alone.labels), name
    assert summary.cells == sum(len(np.unique(np.load(p)[..., 0])) - 1 for p in (tmp_path / "out" / "labels").glob("*"))


def test_bench_predict_times_files_store_and_encoder_on_the_same_tiles(tmp_path, trained_run):
    from cellgap.decoder.bench_predict import run_predict_bench

    row = run_predict_bench(trained_run, n_tiles=6, batch_size=4, rounds=1, device="cpu",
                            json_path=tmp_path / "bench.json")
    assert row.tiles == 6 and row.images_tiles_per_s > 0 and row.store_tiles_per_s > 0
    assert row.parts_over_images > 0 and all(row.stage_seconds[s] > 0 for s in ("read", "encode", "decode", "write"))
    assert json.loads((tmp_path / "bench.json").read_text())[0]["tiles"] == 6
