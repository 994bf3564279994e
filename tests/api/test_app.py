"""The app in-process (TestClient) around a fake predictor: routes, formats, limits, auth, errors, metrics."""
from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cellgap.api.app import create_app
from tests.api.conftest import TILE, FakePredictor, blob_tile, make_settings, npy_bytes, png_bytes


def _file(data: bytes, name: str = "tile.png") -> dict:
    return {"file": (name, data, "application/octet-stream")}


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_id": "fake@0123456789"}


def test_predict_json_lists_cells_and_counts(client, fake):
    answer = client.post("/v1/predict", files=_file(png_bytes(blob_tile())))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["width"], body["height"], body["model_id"]) == (TILE, TILE, "fake@0123456789")
    assert body["name"] == "tile.png" and body["sliding_window"] is False and body["overlay_png"] is None
    assert body["n_cells"] == 2 and body["counts"] == {"tumour": 1, "immune": 1}
    first = body["cells"][0]
    assert first["id"] == 1 and first["class_name"] == "immune" and first["area"] == 81
    assert first["centroid"] == [16.0, 16.0] and first["bbox"] == [12, 12, 21, 21]
    assert first["polygon"][0] == first["polygon"][-1] and len(first["polygon"]) == 5
    assert first["score"] == pytest.approx(0.75) and first["class_confidence"] == pytest.approx(0.75)
    assert fake.batches == [1] and fake.threads == {"cellgap-model"}


def test_predict_geojson_and_png_and_overlay(client):
    tile = png_bytes(blob_tile())
    geo = client.post("/v1/predict?format=geojson", files=_file(tile))
    assert geo.status_code == 200 and geo.headers["content-type"].startswith("application/geo+json")
    features = geo.json()["features"]
    assert geo.json()["type"] == "FeatureCollection" and len(features) == 2
    assert features[0]["properties"]["objectType"] == "detection"
    assert features[0]["geometry"]["type"] == "Polygon"
    png = client.post("/v1/predict?format=png", files=_file(tile))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(png.content)))
    assert overlay.shape == (TILE, TILE, 3) and not np.array_equal(overlay, blob_tile())
    with_overlay = client.post("/v1/predict?overlay=true", files=_file(tile)).json()
    decoded = Image.open(io.BytesIO(base64.b64decode(with_overlay["overlay_png"])))
    assert decoded.size == (TILE, TILE)


def test_larger_and_smaller_images_bypass_the_tile_batch(client, fake):
    big = blob_tile(160, blobs=((20, 20), (100, 130), (140, 30)))
    body = client.post("/v1/predict", files=_file(npy_bytes(big), "big.npy")).json()
    assert body["sliding_window"] is True and body["n_cells"] == 3 and (body["width"], body["height"]) == (160, 160)
    small = client.post("/v1/predict", files=_file(png_bytes(blob_tile(32, blobs=((10, 10),))))).json()
    assert small["n_cells"] == 1 and small["sliding_window"] is False
    assert fake.images == 2 and fake.batches == []


def test_sliding_window_images_use_the_configured_batch_size():
    fake = FakePredictor()
    app = create_app(make_settings(batch_size=3), predictor_factory=lambda _: fake)
    big = blob_tile(160, blobs=((20, 20), (100, 130)))
    with TestClient(app) as client:
        answer = client.post("/v1/predict", files=_file(npy_bytes(big), "big.npy"))
    assert answer.status_code == 200 and answer.json()["sliding_window"] is True
    assert fake.image_batch_sizes == [3]


def test_batch_keeps_upload_order_and_shares_model_batches(client, fake):
    tiles = [blob_tile(blobs=((16, 16),) * (1 + i % 2) if i % 2 == 0 else ((16, 16), (40, 40))) for i in range(6)]
    files = [("files", (f"t{i}.png", png_bytes(t), "image/png")) for i, t in enumerate(tiles)]
    answer = client.post("/v1/predict/batch", files=files)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["name"] for r in results] == [f"t{i}.png" for i in range(6)]
    assert [r["n_cells"] for r in results] == [1, 2, 1, 2, 1, 2]
    assert sum(fake.batches) == 6 and max(fake.batches) > 1


def test_concurrent_requests_are_batched_together():
    fake = FakePredictor(delay_s=0.05)
    app = create_app(make_settings(batch_size=8, batch_wait_ms=20), predictor_factory=lambda _: fake)
    tile = png_bytes(blob_tile())
    with TestClient(app) as client, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: client.post("/v1/predict", files=_file(tile)).status_code, range(16)))
    assert codes == [200] * 16
    assert max(fake.batches) > 1 and len(fake.batches) < 16


def test_models_describes_the_run_in_strict_json(client):
    body = client.get("/v1/models").json()
    model = body["models"][0]
    assert model["model_id"] == "fake@0123456789" and model["tile_size"] == TILE
    assert model["class_names"] == ["tumour", "immune"]
    assert model["run"]["training"]["metric"] is None  # NaN in the run's description becomes null


def test_api_key_guards_every_v1_route_but_not_health():
    app = create_app(make_settings(api_key="s3cret"), predictor_factory=lambda _: FakePredictor())
    tile = _file(png_bytes(blob_tile()))
    with TestClient(app) as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
            assert client.post("/v1/predict", files=tile, headers=headers).status_code == 401
            assert client.get("/v1/models", headers=headers).status_code == 401
            answer = client.post("/v1/evaluate", json={}, headers=headers)
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
        assert client.post("/v1/predict", files=tile, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.post("/v1/predict", headers={"X-API-Key": "wrong"}).status_code == 401  # auth before fields


def test_a_request_without_the_key_is_refused_before_its_body_is_read():
    import asyncio

    app = create_app(make_settings(api_key="s3cret"), predictor_factory=lambda _: FakePredictor())
    reads, sent = [], []

    async def receive():  # a 3 MB upload, within the body limit, that would arrive slowly
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1024, "more_body": len(reads) < 3000}

    async def send(message):
        sent.append(message)

    for key in (None, b"wrong"):
        reads.clear()
        sent.clear()
        headers = [(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"3072000")]
        scope = {"type": "http", "method": "POST", "path": "/v1/predict", "raw_path": b"/v1/predict",
                 "query_string": b"", "headers": headers + ([(b"x-api-key", key)] if key else []),
                 "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 401 and reads == []  # answered without reading a byte of the body
        assert json.loads(sent[1]["body"])["error"] == "unauthorized"


BAD_UPLOADS = [
    ("not an image", _file(b"plain text, not pixels", "a.txt"), 415, "not_an_image"),
    ("empty file", _file(b"", "e.png"), 422, "empty"),
    ("bad dtype", _file(npy_bytes(np.zeros((8, 8, 3), np.int64)), "x.npy"), 422, "unsupported_dtype"),
    ("bad channels", _file(npy_bytes(np.zeros((8, 8, 2), np.uint8)), "x.npy"), 422, "unsupported_channels"),
    ("nan pixels", _file(npy_bytes(np.full((8, 8, 3), np.nan, np.float32)), "x.npy"), 422, "nan_values"),
    ("too many pixels", _file(npy_bytes(np.zeros((600, 600, 3), np.uint8)), "x.npy"), 413, "image_too_large"),
    ("missing field", {"other": ("a.png", png_bytes(blob_tile()), "image/png")}, 422, "missing_field"),
    ("text instead of file", None, 422, None),
]


@pytest.mark.parametrize("name, files, status, code", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_are_4xx_json_and_the_server_keeps_serving(client, name, files, status, code):
    if files is None:
        answer = client.post("/v1/predict", data={"file": "just text"})
    else:
        answer = client.post("/v1/predict", files=files)
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["detail"] and (code is None or body["error"] == code)
    assert client.post("/v1/predict", files=_file(png_bytes(blob_tile()))).status_code == 200


def test_other_bad_requests(client):
    tile = _file(png_bytes(blob_tile()))
    assert client.post("/v1/predict?format=svg", files=tile).status_code == 422
    assert client.post("/v1/predict?overlay=maybe", files=tile).status_code == 422
    assert client.post("/v1/predict", content=b"raw body", headers={"content-type": "image/png"}).status_code == 422
    answer = client.get("/v1/predict")
    assert answer.status_code == 405 and answer.json()["error"] == "method_not_allowed"
    assert client.get("/nowhere").json()["error"] == "not_found"
    broken = client.post("/v1/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert 400 <= broken.status_code < 500


def test_body_limit_413_before_and_while_reading():
    app = create_app(make_settings(max_body_bytes=64 * 1024), predictor_factory=lambda _: FakePredictor())
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    with TestClient(app) as client:
        answer = client.post("/v1/predict", files=_file(npy_bytes(big), "big.npy"))
        assert answer.status_code == 413 and answer.json()["error"] == "too_large"

        def chunks():
            for _ in range(100):
                yield b"x" * 4096

        streamed = client.post("/v1/evaluate", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert client.get("/healthz").status_code == 200


def test_batch_limits(client):
    files = [("files", (f"t{i}.png", png_bytes(blob_tile()), "image/png")) for i in range(33)]
    answer = client.post("/v1/predict/batch", files=files)
    assert answer.status_code == 413 and answer.json()["error"] == "too_many_files"
    mixed = [("files", ("ok.png", png_bytes(blob_tile()), "image/png")), ("files", ("bad.txt", b"nope", "text/plain"))]
    answer = client.post("/v1/predict/batch", files=mixed)
    assert answer.status_code == 415 and "bad.txt" in answer.json()["detail"]


def test_full_queue_is_503_with_retry_after():
    release = threading.Event()

    class Blocking(FakePredictor):
        def predict_batch(self, images):
            release.wait(10)
            return super().predict_batch(images)

    app = create_app(make_settings(queue_size=1, batch_size=1, batch_wait_ms=0), predictor_factory=lambda _: Blocking())
    tile = png_bytes(blob_tile())
    with TestClient(app) as client, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client.post, "/v1/predict", files=_file(tile)) for _ in range(6)]
        busy = None
        for _ in range(200):
            done = [f for f in futures if f.done()]
            if done:
                busy = done[0].result()
                break
            threading.Event().wait(0.02)
        release.set()
        answers = [f.result() for f in futures]
        assert busy is not None and busy.status_code == 503
        assert busy.headers["retry-after"] == "1" and busy.json()["error"] == "busy"
        assert {a.status_code for a in answers} == {200, 503}
        metrics = client.get("/metrics").text
        assert "cellgap_requests_rejected_total" in metrics
        assert client.post("/v1/predict", files=_file(tile)).status_code == 200


def test_without_a_run_the_server_evaluates_and_says_for_good_that_it_does_not_predict():
    app = create_app(make_settings())  # default loader, no CELLGAP_RUN_DIR
    with TestClient(app) as client:
        assert client.get("/readyz").json() == {"status": "ready", "model_id": None}  # ready for what it serves
        for answer in (client.post("/v1/predict", files=_file(png_bytes(blob_tile()))), client.get("/v1/models"),
                       client.post("/v1/predict/batch", files=[("files", ("a.png", png_bytes(blob_tile())))])):
            assert answer.status_code == 501 and answer.json()["error"] == "no_model", answer.text
            assert "CELLGAP_RUN_DIR" in answer.json()["detail"] and "retry-after" not in answer.headers
        assert client.get("/healthz").status_code == 200
        assert client.post("/v1/evaluate", json={"images": [{"gt": {"instances": [[1]]},
                                                            "pred": {"instances": [[1]]}}]}).status_code == 200


def test_min_score_leaves_out_cells_below_it(client):
    tile = png_bytes(blob_tile())
    assert client.post("/v1/predict?min_score=0.7", files=_file(tile)).json()["n_cells"] == 2  # the fake scores 0.75
    assert client.post("/v1/predict?min_score=0.8", files=_file(tile)).json()["n_cells"] == 0
    batch = client.post("/v1/predict/batch?min_score=0.8", files=[("files", ("a.png", tile))]).json()
    assert batch["results"][0]["n_cells"] == 0
    assert client.post("/v1/predict?min_score=2", files=_file(tile)).status_code == 422


def test_unknown_query_parameters_are_refused_by_name(client):
    tile = png_bytes(blob_tile())
    for path, files in (("/v1/predict?formt=png", _file(tile)),
                        ("/v1/predict/batch?format=geojson", [("files", ("a.png", tile))])):
        answer = client.post(path, files=files)
        assert answer.status_code == 422, (path, answer.text)
        assert any(error["loc"][:1] == ["query"] and error["loc"][-1] in ("formt", "format")
                   for error in answer.json()["errors"]), answer.text
    assert client.get("/v1/models?verbose=1").status_code == 422
    assert client.post("/v1/evaluate?radious=3", json={"images": []}).status_code == 422
    assert client.post("/v1/predict?format=png", files=_file(tile)).headers["content-type"] == "image/png"


def test_docs_are_served_from_packaged_assets_or_turned_off():
    with TestClient(create_app(make_settings())) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "cdn" not in page.text.lower()
        scripts = [part.split('"')[1] for part in page.text.split("src=")[1:]]
        assert scripts and all(client.get(url).status_code == 200 for url in scripts)
    with TestClient(create_app(make_settings(docs=False))) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/openapi.json").status_code == 200  # the schema stays for clients


def test_a_broken_run_fails_startup():
    from cellgap.decoder.errors import DecoderError

    def broken(_):
        raise DecoderError("run folder is damaged")

    with pytest.raises(DecoderError, match="damaged"):
        with TestClient(create_app(make_settings(), predictor_factory=broken)):
            pass


def test_prometheus_metrics_count_routes_tiles_and_cells(client):
    tile = _file(png_bytes(blob_tile()))
    for _ in range(3):
        client.post("/v1/predict", files=tile)
    client.post("/v1/predict", files=_file(b"junk"))
    client.get("/nowhere/123")
    text = client.get("/metrics").text
    assert 'cellgap_http_requests_total{method="POST",route="/v1/predict",status="200"} 3.0' in text
    assert 'cellgap_http_requests_total{method="POST",route="/v1/predict",status="415"} 1.0' in text
    assert 'route="other"' in text and "/nowhere/123" not in text
    assert "cellgap_tiles_predicted_total 3.0" in text and "cellgap_cells_found_total 6.0" in text
    assert 'cellgap_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v1/predict"} 4.0' in text
    assert "cellgap_queue_depth 0" in text and "cellgap_model_loaded 1" in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")


def test_metric_labels_stay_bounded_under_made_up_methods_and_paths(client):
    """Every made-up method or path is counted under `other`: the exposition cannot grow without bound."""
    for i in range(200):
        client.request(f"BREW{i}", "/v1/predict")
        client.get(f"/random/{i}")
    client.get("/docs")
    client.get("/openapi.json")
    text = client.get("/metrics").text
    assert "BREW" not in text and "/random/" not in text
    assert 'method="other",route="/v1/predict"' in text and 'method="GET",route="other"' in text
    assert 'route="/docs"' in text and 'route="/openapi.json"' in text
    assert len(text) < 20_000


def test_openapi_is_complete_with_examples(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/evaluate", "/v1/models", "/healthz", "/readyz", "/metrics"):
        assert path in paths
    evaluate = paths["/v1/evaluate"]["post"]
    assert set(evaluate["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert evaluate["requestBody"]["content"]["application/json"]["example"]["images"]
    assert evaluate["responses"]["200"]["content"]["application/json"]["example"]["instance"]["pq"] is not None
    assert "EvaluateArrays" in schema["components"]["schemas"]
    assert schema["components"]["schemas"]["PredictResponse"]["examples"]
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    predict = paths["/v1/predict"]["post"]
    assert {"401", "413", "415", "422", "503"} <= set(predict["responses"])
    assert "image/png" in predict["responses"]["200"]["content"]


def test_openapi_ignores_the_environment_for_its_example(monkeypatch):
    monkeypatch.setenv("CELLGAP_MAX_IMAGE_PIXELS", "4")  # smaller than the documented example's maps
    app = create_app(make_settings(), predictor_factory=lambda _: FakePredictor())
    with TestClient(app) as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    assert answer.json()["paths"]["/v1/evaluate"]["post"]["responses"]["200"]["content"]["application/json"]["example"]


def test_file_names_are_labels_never_paths(client, tmp_path):
    answer = client.post("/v1/predict", files=_file(png_bytes(blob_tile()), "../../etc/passwd.png"))
    assert answer.status_code == 200 and answer.json()["name"] == "passwd.png"
    answer = client.post("/v1/predict", files=_file(b"", "C:\\\\Windows\\\\win.ini"))
    assert answer.status_code == 422 and "(win.ini)" in answer.json()["detail"]


def test_a_non_finite_score_is_sent_as_null_not_as_zero():
    from cellgap.api.routes.predict import finite_scores
    from cellgap.api.schemas import _CELL_EXAMPLE, PredictResponse

    cells = [{**_CELL_EXAMPLE, "id": 1, "score": float("nan"), "class_confidence": float("inf")},
             {**_CELL_EXAMPLE, "id": 2}]
    response = PredictResponse(name="t.png", width=64, height=64, model_id="m", sliding_window=False, n_cells=2,
                               counts={"inflammatory": 2}, cells=cells)
    sent = json.loads(finite_scores(response).model_dump_json())
    assert [(c["score"], c["class_confidence"]) for c in sent["cells"]] == [(None, None), (0.93, 0.88)]


def test_uploads_beyond_the_decoding_slots_wait_their_turn_instead_of_all_decoding_at_once(monkeypatch):
    import asyncio
    import threading
    import time

    import httpx

    from cellgap.api.routes import predict as predict_route

    real, active, most = predict_route.decode_image, [0], [0]
    lock = threading.Lock()

    def slow_decode(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.3)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(predict_route, "decode_image", slow_decode)
    app = create_app(make_settings(max_decoding=1), predictor_factory=lambda _: FakePredictor())
    tile = png_bytes(blob_tile())

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(*(client.post("/v1/predict", files=_file(tile)) for _ in range(4)))

    with TestClient(app):  # runs the lifespan: the model loads
        answers = asyncio.run(burst())
    assert [answer.status_code for answer in answers] == [200] * 4
    assert most[0] == 1  # four concurrent uploads, never two decoded at once
