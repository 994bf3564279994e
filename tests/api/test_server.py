"""A real `cellgap serve` process on loopback, over a real tiny trained run, called with an HTTP client."""
from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from cellgap.api.bench import serve_in_subprocess
from cellgap.featurestore.datasets.synthetic import make_image, make_tile
from tests.api.conftest import AUTH, ONE_THREAD, npy_bytes, png_bytes, rss_mib

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def tile_png():
    return png_bytes(make_tile(3, size=256).image)


def _upload(data: bytes, name: str = "tile.png") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def test_predict_a_tile_in_every_format(server, tile_png):
    client, _ = server
    model_id = client.get("/v1/models").json()["models"][0]["model_id"]
    body = client.post("/v1/predict", files=_upload(tile_png)).json()
    assert (body["width"], body["height"], body["model_id"], body["sliding_window"]) == (256, 256, model_id, False)
    assert body["n_cells"] == len(body["cells"]) == sum(body["counts"].values())
    assert set(body["counts"]) >= {"tumour", "lymphocyte", "stromal"}
    for cell in body["cells"]:
        assert set(cell) == {"id", "class_id", "class_name", "score", "class_confidence", "centroid", "bbox", "area",
                             "polygon"}
    geo = client.post("/v1/predict", params={"format": "geojson"}, files=_upload(tile_png))
    assert geo.headers["content-type"].startswith("application/geo+json")
    assert geo.json()["type"] == "FeatureCollection" and len(geo.json()["features"]) == body["n_cells"]
    png = client.post("/v1/predict", params={"format": "png"}, files=_upload(tile_png))
    assert np.asarray(Image.open(io.BytesIO(png.content))).shape == (256, 256, 3)


def test_predict_a_larger_image_and_a_batch(server, tile_png):
    client, _ = server
    field = make_image(5, 300, 420).image
    body = client.post("/v1/predict", files=_upload(npy_bytes(field), "field.npy")).json()
    assert (body["height"], body["width"], body["sliding_window"]) == (300, 420, True)
    batch = client.post("/v1/predict/batch", files=[("files", (f"t{i}.png", tile_png, "image/png")) for i in range(3)])
    assert batch.status_code == 200 and [r["name"] for r in batch.json()["results"]] == ["t0.png", "t1.png", "t2.png"]
    metrics = client.get("/metrics").text
    assert "cellgap_tiles_predicted_total" in metrics


def test_models_and_readiness(server, tiny_run):
    client, _ = server
    assert client.get("/readyz").json()["status"] == "ready"
    answer = client.get("/v1/models")
    assert str(tiny_run) not in answer.text and str(tiny_run.parent) not in answer.text  # no server paths
    assert answer.json()["models"][0]["run"]["run"] == tiny_run.name
    model = answer.json()["models"][0]
    assert model["tile_size"] == 256 and model["class_names"] == ["tumour", "lymphocyte", "stromal"]
    assert {"encoder", "layers", "classes", "training", "store_manifest"} <= set(model["run"])
    assert model["run"]["encoder"]["name"] == "convnext_atto"


def test_api_key_is_required_on_v1_only(server, tile_png):
    client, _ = server
    url = str(client.base_url)
    for headers in ({}, {"X-API-Key": "nope"}):
        assert httpx.post(f"{url}/v1/predict", files=_upload(tile_png), headers=headers).status_code == 401
        assert httpx.get(f"{url}/v1/models", headers=headers).json()["error"] == "unauthorized"
        assert httpx.post(f"{url}/v1/evaluate", json={}, headers=headers).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200


def test_evaluate_with_known_answers(server):
    client, _ = server
    gt = [[0, 1, 1, 0], [0, 1, 1, 0], [2, 2, 0, 0], [2, 2, 0, 0]]
    answer = client.post("/v1/evaluate", json={"images": [{"gt": {"instances": gt}, "pred": {"instances": gt}}]})
    assert answer.json()["instance"]["pq"] == pytest.approx(1.0, abs=1e-5)
    files = [("gt", ("a.npy", npy_bytes(np.array(gt)), "x")), ("pred", ("a.npy", npy_bytes(np.zeros((4, 4), int)), "x"))]
    missed = client.post("/v1/evaluate", params={"magnification": 20}, files=files).json()
    assert missed["instance"]["pq"] == 0.0 and missed["detection"]["recall_d"] == 0.0


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    data = bytearray(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


BAD = [
    ("not an image", {"files": _upload(b"%PDF-1.4 not pixels", "a.pdf")}, 415),
    ("empty", {"files": _upload(b"", "e.png")}, 422),
    ("dtype", {"files": _upload(npy_bytes(np.zeros((8, 8, 3), np.int64)), "x.npy")}, 422),
    ("channels", {"files": _upload(npy_bytes(np.zeros((8, 8, 5), np.uint8)), "x.npy")}, 422),
    ("nan", {"files": _upload(npy_bytes(np.full((8, 8, 3), np.nan, np.float32)), "x.npy")}, 422),
    ("too many pixels", {"files": _upload(npy_bytes(np.zeros((1100, 1000, 3), np.uint8)), "x.npy")}, 413),
    ("decompression bomb", {"files": _upload(_png_claiming(50_000, 50_000))}, 413),
    ("body too large", {"files": _upload(b"\x89PNG\r\n\x1a\n" + bytes(9 * 1024 * 1024))}, 413),
    ("missing field", {"files": {"picture": ("a.png", b"x", "image/png")}}, 422),
    ("damaged png", {"files": _upload(b"\x89PNG\r\n\x1a\n" + bytes(100))}, 422),
]


@pytest.mark.parametrize("name, kwargs, status", BAD, ids=[b[0] for b in BAD])
def test_every_bad_input_is_a_4xx_and_the_server_stays_healthy(server, tile_png, name, kwargs, status):
    client, process = server
    answer = client.post("/v1/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.json()["detail"]
    assert process.poll() is None
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/predict", files=_upload(tile_png)).status_code == 200


def test_bad_evaluate_inputs_are_4xx(server):
    client, _ = server
    mismatched = {"images": [{"gt": {"instances": [[0, 1]]}, "pred": {"instances": [[0, 1, 1]]}}]}
    assert client.post("/v1/evaluate", json=mismatched).json()["error"] == "shape_mismatch"
    nan = [("gt", ("a.npy", npy_bytes(np.full((4, 4), np.nan)), "x")), ("pred", ("a.npy", npy_bytes(np.zeros((4, 4))), "x"))]
    assert client.post("/v1/evaluate", files=nan).json()["error"] == "nan_values"
    assert client.post("/v1/evaluate", json={"images": "no"}).status_code == 422
    assert client.get("/healthz").status_code == 200


async def _burst(url: str, body: bytes, count: int, headers: dict) -> list[int]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300.0, limits=limits) as client:
        answers = await asyncio.gather(*(client.post("/v1/predict", files=_upload(body)) for _ in range(count)))
    return [a.status_code for a in answers]


def test_a_burst_of_200_concurrent_requests(server, tile_png):
    """Every request answered, and memory bounded: the first burst sets the high-water mark (the largest
    batches the model forms; the allocator keeps freed blocks for reuse), a second one must reuse it."""
    client, process = server
    before = rss_mib(process.pid)
    first = asyncio.run(_burst(str(client.base_url), tile_png, 200, AUTH))
    after_first = rss_mib(process.pid)
    codes = asyncio.run(_burst(str(client.base_url), tile_png, 200, AUTH))
    after_second = rss_mib(process.pid)
    print(f"rss before {before:.0f} MiB, after burst 1 {after_first:.0f}, after burst 2 {after_second:.0f}")
    assert first == codes == [200] * 200
    assert after_first - before < 1024, f"server memory grew by {after_first - before:.0f} MiB in one burst"
    assert after_second - after_first < 100, f"a second burst added {after_second - after_first:.0f} MiB"
    metrics = client.get("/metrics").text
    assert "cellgap_queue_depth 0" in metrics
    assert 'method="POST",route="/v1/predict",status="200"}' in metrics
    assert client.get("/healthz").status_code == 200


def test_without_a_key_and_with_a_small_queue_overload_is_503_not_500(tiny_run, tile_png):
    env = {**ONE_THREAD, "CELLGAP_QUEUE_SIZE": "4", "CELLGAP_BATCH_SIZE": "2"}
    with serve_in_subprocess(tiny_run, env=env, args=["--device", "cpu", "--log-level", "error"]) as (url, process):
        assert httpx.get(f"{url}/v1/models").status_code == 200  # auth off: no key needed
        codes = asyncio.run(_burst(url, tile_png, 40, {}))
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        busy = httpx.post(f"{url}/v1/predict", files=_upload(tile_png))
        assert busy.status_code == 200
        assert process.poll() is None
