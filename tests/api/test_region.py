"""POST /v1/predict/region: a region of a slide under the slides root, predicted as an upload of its pixels would be,
with cells in level-0 slide pixels; every way out of the slides root refused."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from cellgap.api.app import create_app
from cellgap.api.settings import Settings
from cellgap.featurestore.slides.reader import open_slide
from tests.api.conftest import AUTH, KEY, FakePredictor, make_settings, png_bytes

SLIDE_W, SLIDE_H = 320, 224


def write_slide(path: Path, image: np.ndarray, mpp: float | None, levels: int = 2) -> Path:
    """A tiled pyramidal TIFF (OpenSlide's generic-tiff), each level half the one before, with its pixel size."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        level = image
        for i in range(levels):
            resolution = {} if mpp is None else {"resolution": (1e4 / mpp / 2**i, 1e4 / mpp / 2**i),
                                                 "resolutionunit": "CENTIMETER"}
            tiff.write(level, tile=(64, 64), photometric="rgb", compression="zlib", subfiletype=0 if i == 0 else 1,
                       **resolution)
            level = np.asarray(Image.fromarray(level).reduce(2))
    return path


def blob_field(height: int = SLIDE_H, width: int = SLIDE_W, seed: int = 0) -> np.ndarray:
    """A light field with dark 10x10 squares (the fake model's nuclei), some on even, some on odd pixels."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 220, np.uint8)
    for _ in range(40):
        row, col = int(rng.integers(0, height - 10)), int(rng.integers(0, width - 10))
        image[row : row + 10, col : col + 10] = 40
    return image


@pytest.fixture
def slides(tmp_path) -> Path:
    """The slides root: case/a.tif at the fake model's 0.5 mpp, case/fine.tif at 0.25 mpp, a slide without a pixel
    size, files that are not slides, and symbolic links inside the root and leading out of it."""
    root, outside = tmp_path / "slides", tmp_path / "outside"
    write_slide(root / "case" / "a.tif", blob_field(), mpp=0.5)
    write_slide(root / "case" / "fine.tif", blob_field(seed=1), mpp=0.25)
    write_slide(root / "no-mpp.tif", blob_field(seed=2), mpp=None)
    (root / "notes.txt").write_text("not a slide")
    (root / "fake.svs").write_text("not a slide either")
    write_slide(outside / "secret.tif", blob_field(seed=3), mpp=0.5)
    (root / "leak.tif").symlink_to(outside / "secret.tif")
    (root / "dangling.tif").symlink_to(outside / "nothing-here.tif")
    (root / "out").symlink_to(outside, target_is_directory=True)
    (root / "alias.tif").symlink_to(root / "case" / "a.tif")  # stays inside: allowed
    (root / "loop.tif").symlink_to(root / "loop.tif")
    return root


def _client(slides: Path | None, **settings) -> TestClient:
    app = create_app(make_settings(slides_root=slides, **settings), predictor_factory=lambda _: FakePredictor())
    return TestClient(app)


@pytest.fixture
def client(slides):
    with _client(slides) as test_client:
        yield test_client


def _region(slide: str, x: int, y: int, width: int, height: int, **extra) -> dict:
    return {"slide": slide, "x": x, "y": y, "width": width, "height": height, **extra}


def _shifted(cell: dict, dx: float, dy: float) -> dict:
    return {**cell, "centroid": [cell["centroid"][0] + dx, cell["centroid"][1] + dy],
            "bbox": [cell["bbox"][0] + dx, cell["bbox"][1] + dy, cell["bbox"][2] + dx, cell["bbox"][3] + dy],
            "polygon": [[x + dx, y + dy] for x, y in cell["polygon"]]}


def _upload(client: TestClient, image: np.ndarray, **params):
    return client.post("/v1/predict", params=params, files={"file": ("region.png", png_bytes(image), "image/png")})


@pytest.mark.parametrize("box", [(40, 24, 64, 64), (37, 51, 150, 110), (0, 0, SLIDE_W, SLIDE_H)],
                         ids=["one-tile", "sliding-windows", "whole-slide"])
def test_region_cells_are_the_uploaded_pixels_cells_shifted_by_the_origin(client, slides, box):
    x, y, width, height = box
    with open_slide(slides / "case" / "a.tif") as slide:
        pixels = slide.read(x, y, width, height)
    uploaded = _upload(client, pixels).json()
    answer = client.post("/v1/predict/region", json=_region("case/a.tif", *box))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["name"], body["x"], body["y"], body["width"], body["height"]) == ("case/a.tif", *box)
    assert (body["scale"], body["mpp"], body["slide_mpp"]) == (1.0, 0.5, 0.5)
    assert (body["read_width"], body["read_height"]) == (width, height)
    assert body["sliding_window"] == uploaded["sliding_window"] and body["counts"] == uploaded["counts"]
    assert body["n_cells"] == uploaded["n_cells"] > 0
    assert body["cells"] == [_shifted(cell, x, y) for cell in uploaded["cells"]]

    geo = client.post("/v1/predict/region", params={"format": "geojson"}, json=_region("case/a.tif", *box))
    assert geo.headers["content-type"].startswith("application/geo+json")
    uploaded_geo = _upload(client, pixels, format="geojson").json()
    assert len(geo.json()["features"]) == len(uploaded_geo["features"]) == body["n_cells"]
    for ours, theirs in zip(geo.json()["features"], uploaded_geo["features"]):
        assert ours["properties"] == theirs["properties"]
        rings = theirs["geometry"]["coordinates"]
        assert ours["geometry"]["coordinates"] == [[[px + x, py + y] for px, py in ring] for ring in rings]

    png = client.post("/v1/predict/region", params={"format": "png"}, json=_region("case/a.tif", *box))
    assert png.headers["content-type"] == "image/png"
    assert png.content == _upload(client, pixels, format="png").content


def test_a_finer_slide_is_read_at_the_models_pixel_size_and_cells_come_back_in_level0_pixels(client, slides):
    x, y, width, height = 40, 20, 160, 128  # 0.25 mpp slide, 0.5 mpp model: read 80 x 64 from the pyramid's level 1
    with open_slide(slides / "case" / "fine.tif") as slide:
        pixels = slide.read(x, y, width // 2, height // 2, downsample=2.0)
    uploaded = _upload(client, pixels).json()
    body = client.post("/v1/predict/region", json=_region("case/fine.tif", x, y, width, height)).json()
    assert (body["scale"], body["slide_mpp"], body["mpp"]) == (2.0, 0.25, 0.5)
    assert (body["width"], body["height"], body["read_width"], body["read_height"]) == (160, 128, 80, 64)
    assert body["n_cells"] == uploaded["n_cells"] > 0
    for ours, theirs in zip(body["cells"], uploaded["cells"]):
        cx, cy = theirs["centroid"]
        assert ours["centroid"] == pytest.approx([x + (cx + 0.5) * 2 - 0.5, y + (cy + 0.5) * 2 - 0.5])
        assert ours["bbox"] == [x + 2 * theirs["bbox"][0], y + 2 * theirs["bbox"][1],
                                x + 2 * theirs["bbox"][2], y + 2 * theirs["bbox"][3]]
        assert ours["polygon"] == [[x + 2 * px, y + 2 * py] for px, py in theirs["polygon"]]
        assert ours["area"] == 4 * theirs["area"]
    png = client.post("/v1/predict/region", params={"format": "png"}, json=_region("case/fine.tif", x, y, width, height))
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape == (64, 80, 3)  # the overlay is the image read


TRAVERSAL = {
    "/etc/passwd": "invalid_slide_path",
    "../outside/secret.tif": "invalid_slide_path",
    "case/../../outside/secret.tif": "invalid_slide_path",
    "case/../a.tif": "invalid_slide_path",  # '..' is refused even where it would stay inside
    "..": "invalid_slide_path",
    "~/secret.tif": "invalid_slide_path",
    "..\\outside\\secret.tif": "invalid_slide_path",
    "case\\a.tif": "invalid_slide_path",
    "case/a.tif\x00.png": "invalid_slide_path",
    "leak.tif": "outside_slides_root",  # a link to a file outside
    "out/secret.tif": "outside_slides_root",  # through a linked folder
    "dangling.tif": "outside_slides_root",  # the same answer whether or not the target exists
    "out/no-such.tif": "outside_slides_root",
    "%2e%2e/outside/secret.tif": "slide_not_found",  # a JSON string is not URL-decoded: a name like any other
    "..%2foutside%2fsecret.tif": "slide_not_found",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd": "slide_not_found",
    "missing.tif": "slide_not_found",
    "case": "slide_not_found",  # a folder
    ".": "slide_not_found",
    "loop.tif": "slide_not_found",
    "x" * 300 + ".tif": "slide_not_found",  # a name the file system refuses
    "notes.txt": "not_a_slide",
    "fake.svs": "not_a_slide",  # a slide's suffix, not a slide's content
}
STATUS = {"invalid_slide_path": 422, "outside_slides_root": 403, "slide_not_found": 404, "not_a_slide": 415}


@pytest.mark.parametrize("name", list(TRAVERSAL), ids=[repr(n)[:40] for n in TRAVERSAL])
def test_no_path_leads_outside_the_slides_root(client, slides, name):
    answer = client.post("/v1/predict/region", json=_region(name, 0, 0, 64, 64))
    code = TRAVERSAL[name]
    assert (answer.status_code, answer.json()["error"]) == (STATUS[code], code), answer.text
    assert str(slides.parent) not in answer.text and "nothing-here" not in answer.text  # no server path, no target


def test_traversal_in_the_url_and_json_escapes_is_refused_too(client, slides):
    escaped = b'{"slide": "\\u002e\\u002e/outside/secret.tif", "x": 0, "y": 0, "width": 64, "height": 64}'
    answer = client.post("/v1/predict/region", content=escaped, headers={"content-type": "application/json"})
    assert (answer.status_code, answer.json()["error"]) == (422, "invalid_slide_path")
    for path in ("/v1/predict/region/..%2F..%2Foutside%2Fsecret.tif", "/v1/predict/region%2F..%2F..%2Fsecret.tif",
                 "/v1/predict/%2e%2e/region"):
        assert client.post(path, json=_region("case/a.tif", 0, 0, 64, 64)).status_code in (404, 405)
    answer = client.post("/v1/predict/region", params={"slide": "../outside/secret.tif"},
                         json=_region("case/a.tif", 0, 0, 64, 64))
    assert (answer.status_code, answer.json()["error"]) == (422, "invalid_request")  # no slide in the query
    assert client.post("/v1/predict/region", json=_region("", 0, 0, 64, 64)).status_code == 422


def test_a_link_inside_the_root_is_followed_and_absolute_paths_inside_it_are_still_refused(client, slides):
    assert client.post("/v1/predict/region", json=_region("alias.tif", 0, 0, 64, 64)).status_code == 200
    assert client.post("/v1/predict/region", json=_region("./case//a.tif", 0, 0, 64, 64)).status_code == 200
    inside = str(slides / "case" / "a.tif")
    answer = client.post("/v1/predict/region", json=_region(inside, 0, 0, 64, 64))
    assert (answer.status_code, answer.json()["error"]) == (422, "invalid_slide_path")


def test_a_slide_without_a_pixel_size_is_named_and_mpp_in_the_request_fixes_it(client):
    answer = client.post("/v1/predict/region", json=_region("no-mpp.tif", 0, 0, 64, 64))
    assert (answer.status_code, answer.json()["error"]) == (422, "no_mpp")
    assert "no-mpp.tif" in answer.json()["detail"] and "mpp" in answer.json()["detail"]
    fixed = client.post("/v1/predict/region", json=_region("no-mpp.tif", 0, 0, 64, 64, mpp=0.5))
    assert fixed.status_code == 200 and fixed.json()["slide_mpp"] == 0.5


@pytest.mark.parametrize("box", [(300, 0, 64, 64), (0, 200, 64, 64), (0, 0, SLIDE_W + 1, 10), (SLIDE_W, 0, 1, 1)])
def test_a_region_leaving_the_slide_is_refused(client, box):
    answer = client.post("/v1/predict/region", json=_region("case/a.tif", *box))
    assert (answer.status_code, answer.json()["error"]) == (422, "region_outside_slide")
    assert f"{SLIDE_W} x {SLIDE_H}" in answer.json()["detail"]


@pytest.mark.parametrize("body", [
    {"slide": "case/a.tif", "x": -1, "y": 0, "width": 64, "height": 64},
    {"slide": "case/a.tif", "x": 0, "y": 0, "width": 0, "height": 64},
    {"slide": "case/a.tif", "x": 0, "y": 0, "width": 64},
    {"slide": "case/a.tif", "x": 0, "y": 0, "width": 64, "height": 64, "level": 1},
    {"slide": "case/a.tif", "x": 0, "y": 0, "width": 64, "height": 64, "mpp": 0},
    {"slide": 7, "x": 0, "y": 0, "width": 64, "height": 64},
])
def test_invalid_bodies_are_422(client, body):
    answer = client.post("/v1/predict/region", json=body)
    assert answer.status_code == 422 and answer.json()["error"] in ("invalid_request", "missing_field")


def test_the_pixel_limit_holds_before_reading(slides, monkeypatch):
    from cellgap.api.slides import RegionPlan

    def never(*_):
        raise AssertionError("read although the region was refused")

    monkeypatch.setattr(RegionPlan, "read", never)
    with _client(slides, max_image_pixels=64 * 64) as client:
        answer = client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 128, 128))
        assert (answer.status_code, answer.json()["error"]) == (413, "image_too_large")
        # a 0.125 mpp slide for a 0.5 mpp model: 48 x 32 pixels read, but 192 x 128 at level 0 is above 4 x the limit
        answer = client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 192, 128, mpp=0.125))
        assert (answer.status_code, answer.json()["error"]) == (413, "image_too_large")


def test_the_route_is_off_without_a_slides_root_and_without_a_model(slides):
    with _client(None) as client:
        answer = client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 64, 64))
        assert (answer.status_code, answer.json()["error"]) == (501, "no_slides_root")
        assert "CELLGAP_SLIDES_ROOT" in answer.json()["detail"] and "Retry-After" not in answer.headers
    with TestClient(create_app(make_settings(slides_root=slides))) as client:  # no run: evaluate only
        answer = client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 64, 64))
        assert (answer.status_code, answer.json()["error"]) == (501, "no_model")


def test_the_api_key_is_needed(slides):
    with _client(slides, api_key=KEY) as client:
        assert client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 64, 64)).status_code == 401
        answer = client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 64, 64), headers=AUTH)
        assert answer.status_code == 200


def test_a_full_queue_refuses_before_reading(slides, monkeypatch):
    from cellgap.api.slides import RegionPlan

    monkeypatch.setattr(RegionPlan, "read", lambda *_: (_ for _ in ()).throw(AssertionError("read while busy")))
    with _client(slides, queue_size=1) as client:
        service = client.app.state.service
        with service.reserve([(64, 64)]):  # the queue's whole room taken
            answer = client.post("/v1/predict/region", json=_region("case/a.tif", 0, 0, 64, 64))
    assert answer.status_code == 503 and answer.json()["error"] == "busy" and "Retry-After" in answer.headers


def test_slides_are_closed_after_each_request(client, monkeypatch):
    from cellgap.featurestore.slides import reader

    opened: list[reader.Slide] = []
    closed: list[reader.Slide] = []
    original_open, original_close = reader.open_slide, reader.Slide.close

    def tracking_open(*args, **kwargs):
        opened.append(original_open(*args, **kwargs))
        return opened[-1]

    def tracking_close(self):
        closed.append(self)
        original_close(self)

    monkeypatch.setattr("cellgap.api.slides.open_slide", tracking_open)
    monkeypatch.setattr(reader.Slide, "close", tracking_close)
    for box in ((0, 0, 64, 64), (300, 0, 64, 64)):  # one answered, one refused after opening
        client.post("/v1/predict/region", json=_region("case/a.tif", *box))
    assert len(opened) == 2 and closed == opened


def test_the_slides_root_setting_must_be_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLGAP_SLIDES_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("CELLGAP_SLIDES_ROOT", str(tmp_path))
    assert Settings().slides_root == tmp_path


def test_the_openapi_document_describes_the_route(client):
    operation = client.get("/openapi.json").json()["paths"]["/v1/predict/region"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "403", "404", "413", "415", "422", "501", "503"}
    assert {p["name"] for p in operation["parameters"]} == {"format", "overlay", "min_score"}
    assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RegionRequest")
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert set(schemas["RegionRequest"]["required"]) == {"slide", "x", "y", "width", "height"}


@pytest.mark.slow
def test_the_real_server_reads_a_region_as_it_predicts_the_same_pixels_uploaded(server, server_slides, tiny_run):
    """The real model behind `cellgap serve` on loopback: the region's cells are the upload's, shifted."""
    from cellgap.decoder.checkpoint import BEST, load_checkpoint
    from cellgap.decoder.slides import run_mpp
    from cellgap.featurestore.datasets.synthetic import make_image

    client, process = server
    mpp = run_mpp(load_checkpoint(tiny_run / BEST).manifest)
    field = make_image(11, 512, 640).image
    write_slide(server_slides / "real" / "slide.tif", field, mpp=mpp)
    x, y = 96, 160
    answer = client.post("/v1/predict/region", json=_region("real/slide.tif", x, y, 256, 256))
    assert answer.status_code == 200, answer.text
    uploaded = client.post("/v1/predict", files={"file": ("r.png", png_bytes(field[y : y + 256, x : x + 256]),
                                                          "image/png")}).json()
    body = answer.json()
    assert body["n_cells"] == uploaded["n_cells"] and body["scale"] == 1.0
    assert body["cells"] == [_shifted(cell, x, y) for cell in uploaded["cells"]]
    refused = client.post("/v1/predict/region", json=_region("../" + os.path.basename(server_slides), 0, 0, 64, 64))
    assert refused.status_code == 422 and str(server_slides) not in refused.text
    assert json.loads(client.get("/readyz").text)["status"] == "ready" and process.poll() is None
