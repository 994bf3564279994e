"""The service under hostile or unlucky clients, against real uvicorn servers on loopback: bursts of large
uploads refused before decoding, JSON bombs refused while parsed, slow clients cut off, and nothing of the
server's file system in its answers. Every wait is bounded."""
from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from cellgap.api.app import create_app
from cellgap.api.bench import serve_in_subprocess
from cellgap.api.routes import predict as predict_route
from tests.api.conftest import FakePredictor, live_server, make_settings, npy_bytes, png_bytes, rss_mib


def _raw(url: str, request: bytes, timeout_s: float = 5.0) -> bytes:
    """Send `request` as is on a new connection and read the answer until the server closes or `timeout_s`."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(request)
        return _read_until_closed(sock, timeout_s)


def _read_until_closed(sock: socket.socket, timeout_s: float) -> bytes:
    answer, deadline = b"", time.monotonic() + timeout_s
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if b"\r\n\r\n" in answer and b"content-length" not in answer.lower():
                break
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        answer += chunk
    return answer


# --- uploads: admitted from their headers, refused before decoding when the queue has no room ----------------

class Blocking(FakePredictor):
    """Holds every prediction until `release` is set (at most 20 s)."""

    def __init__(self) -> None:
        super().__init__()
        self.release, self.started = threading.Event(), threading.Event()

    def predict_image(self, image, batch_size=8):
        self.started.set()
        self.release.wait(20)
        return super().predict_image(image, batch_size)


def test_a_burst_of_large_uploads_is_refused_before_decoding_and_before_reading_the_body(monkeypatch):
    decoded = []
    real_decode = predict_route.decode_image
    monkeypatch.setattr(predict_route, "decode_image", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    fake = Blocking()
    settings = make_settings(queue_size=16, max_decoding=1, batch_wait_ms=0.0)  # one 256 px image (16 tiles) fills it
    app = create_app(settings, predictor_factory=lambda _: fake)
    image = png_bytes(np.full((256, 256, 3), 200, np.uint8))
    with live_server(app, settings) as url, ThreadPoolExecutor(9) as pool:
        post = lambda name: httpx.post(f"{url}/v1/predict", files={"file": (name, image)}, timeout=30)  # noqa: E731
        running = pool.submit(post, "running.png")  # taken by the model, which holds it
        assert fake.started.wait(10)
        waiting = pool.submit(post, "waiting.png")  # fills the queue
        for _ in range(250):  # until its room in the queue is taken
            if app.state.service.batcher.pending_cost >= 16:
                break
            time.sleep(0.02)
        assert app.state.service.batcher.pending_cost >= 16
        burst = [pool.submit(post, f"{i}.png") for i in range(7)]
        answers = [future.result(timeout=30) for future in burst]
        assert [a.status_code for a in answers] == [503] * 7
        assert all(a.headers["retry-after"] == "1" and a.json()["error"] == "busy" for a in answers)
        assert len(decoded) == 2  # only the admitted uploads were decoded
        # a declared 1 MB upload is answered before a byte of it is sent
        head = (b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 1000000\r\n\r\n")
        early = _raw(url, head, timeout_s=5.0)
        assert early.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in early.lower()
        fake.release.set()
        assert running.result(timeout=30).status_code == 200 and waiting.result(timeout=30).status_code == 200
        assert post("after.png").status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
        assert "cellgap_uploads_decoded_total 3.0" in metrics and "cellgap_requests_rejected_total 8.0" in metrics


def test_memory_is_handed_back_once_the_requests_of_a_spike_are_done():
    settings = make_settings()
    app = create_app(settings, predictor_factory=lambda _: FakePredictor())
    trims = []
    app.state.memory._trim, app.state.memory.threshold = lambda: trims.append(1), 1  # any decoded byte counts
    image = png_bytes(np.full((128, 128, 3), 200, np.uint8))
    with live_server(app, settings) as url, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: httpx.post(f"{url}/v1/predict", files={"file": ("a.png", image)},
                                                     timeout=30), range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        for _ in range(100):
            if trims:
                break
            time.sleep(0.02)
        assert 1 <= len(trims) <= 4  # after the last request of the spike, not after every request of a long one
        released = len(trims)
        assert httpx.get(f"{url}/healthz").status_code == 200 and len(trims) == released  # nothing decoded


def test_serve_leaves_glibcs_allocator_as_it_is(monkeypatch):
    """`--malloc keep` (keep freed memory for the next forward pass) is for the batch commands; a server must
    give a spike's memory back."""
    import cellgap.api.cli as api_cli
    import cellgap.cli as cli

    kept, served = [], []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda *a, **k: kept.append(1))
    monkeypatch.setattr(api_cli, "run_serve", lambda args: served.append(args) or 0)
    assert cli.main(["serve"]) == 0
    assert served and not kept


# --- slow clients ---------------------------------------------------------------------------------------------

SLOW_ENV = {"CELLGAP_HEADER_TIMEOUT_S": "1", "CELLGAP_BODY_TIMEOUT_S": "2", "CELLGAP_READ_TIMEOUT_S": "1",
            "CELLGAP_MAX_CONNECTIONS": "8", "CELLGAP_KEEP_ALIVE_S": "1"}


@pytest.fixture(scope="module")
def plain_server():
    """`cellgap serve` without a run (evaluate only: it starts in seconds) with short client deadlines."""
    with serve_in_subprocess(None, env=SLOW_ENV, args=["--log-level", "warning"]) as (url, process):
        yield url, process


def _closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> float | None:
    """Seconds until the server closes `sock` (sending `drip` every 0.2 s meanwhile), or None."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < seconds:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(65536) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed
            return time.monotonic() - start
    return None


def test_a_client_that_sends_its_headers_slowly_is_cut_off(plain_server):
    url, process = plain_server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as idle, \
            socket.create_connection((host, int(port)), timeout=5) as dripping:
        dripping.sendall(b"POST /v1/evaluate HTTP/1.1\r\nHost: t\r\n")
        closed = _closed_within(dripping, 6.0, drip=b"X-A: b\r\n")  # a header line every 0.2 s
        assert closed is not None and closed < 4.0, closed
        assert _closed_within(idle, 3.0) is not None  # a connection that never sends a byte, too
    assert process.poll() is None and httpx.get(f"{url}/healthz").status_code == 200


def test_a_body_sent_slowly_is_a_408(plain_server):
    url, _ = plain_server
    host, port = url.removeprefix("http://").split(":")
    head = b"POST /v1/evaluate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as trickle:  # one byte every 0.2 s: whole-body limit
        trickle.sendall(head)
        start, answer = time.monotonic(), b""
        trickle.settimeout(0.2)
        while time.monotonic() - start < 8.0 and not answer:
            try:
                trickle.sendall(b" ")
                answer = trickle.recv(65536)
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - start < 5.0
    stalled = _raw(url, head + b'{"images": ', timeout_s=6.0)  # then nothing more: the read limit
    assert stalled.startswith(b"HTTP/1.1 408") and b"timeout" in stalled


def test_connections_beyond_the_limit_are_refused_until_the_slow_ones_are_cut_off(plain_server):
    url, _ = plain_server
    host, port = url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.2)
        assert _raw(url, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").startswith(b"HTTP/1.1 503")
        for _ in range(50):  # the idle ones are closed after the header deadline (1 s)
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
            time.sleep(0.1)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_the_server_hands_a_spikes_memory_back(plain_server):
    """Six concurrent evaluate requests of 47 MB each raise the server's memory by hundreds of MB; once they
    are answered it falls back (without the release it stayed ~80 MiB above, with `--malloc keep` at the peak)."""
    url, process = plain_server
    labels = np.zeros((1400, 1400), np.int32)
    labels[100:200, 100:200] = 1
    data = npy_bytes(labels)
    files = [(side, (f"{i}.npy", data, "application/octet-stream")) for i in range(3) for side in ("gt", "pred")]
    assert httpx.post(f"{url}/v1/evaluate", files=files[:2], timeout=60).status_code == 200  # warm
    before = rss_mib(process.pid)
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: httpx.post(f"{url}/v1/evaluate", files=files, timeout=120).status_code,
                              range(6)))
    assert codes == [200] * 6
    peak = next(int(line.split()[1]) / 1024 for line in open(f"/proc/{process.pid}/status")
                if line.startswith("VmHWM:"))
    after = before
    for _ in range(50):  # the release runs after the last answer: give it a moment
        after = rss_mib(process.pid)
        if after < before + 40:
            break
        time.sleep(0.1)
    print(f"rss before {before:.0f} MiB, peak {peak:.0f}, after {after:.0f}")
    assert peak > before + 100, "no spike: the test measures nothing"
    assert after < before + 40, f"{after - before:.0f} MiB still held after the spike"


# --- JSON bombs -----------------------------------------------------------------------------------------------

def _tiny_images(count: int) -> bytes:
    one = b'{"gt": {"instances": [[0]]}, "pred": {"instances": [[0]]}}'
    return b'{"images": [' + b", ".join([one] * count) + b"]}"


def test_a_json_bomb_is_refused_while_parsed_and_health_answers_meanwhile(plain_server):
    url, _ = plain_server
    bomb = _tiny_images(135_000)  # 8 MB of tiny images, within the JSON limit (8 MiB)
    assert 7_000_000 < len(bomb) < 8 * 1024 * 1024
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=url, timeout=30) as health:
        health.get("/healthz")
        start = time.monotonic()
        sent = pool.submit(httpx.post, f"{url}/v1/evaluate", content=bomb,
                           headers={"content-type": "application/json"}, timeout=60)
        worst = 0.0
        while not sent.done() and time.monotonic() - start < 60:
            asked = time.monotonic()
            assert health.get("/healthz").status_code == 200
            worst = max(worst, time.monotonic() - asked)
            time.sleep(0.02)
        answer = sent.result(timeout=60)
        took = time.monotonic() - start
    assert answer.status_code == 413 and answer.json()["error"] == "too_many_files"
    assert took < 5.0, took
    assert worst < 1.0, f"/healthz took {worst:.2f} s during the upload"
    # a JSON body that declares more than the limit is refused before it is sent
    head = (b"POST /v1/evaluate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 20000000\r\n\r\n")
    early = _raw(url, head, timeout_s=5.0)
    assert early.startswith(b"HTTP/1.1 413") and b"too_large" in early


def test_a_streamed_json_body_is_refused_as_soon_as_it_passes_the_json_limit():
    from fastapi.testclient import TestClient

    def chunks():
        for _ in range(100):  # 100 x 64 KiB: within the body limit, above the JSON limit
            yield b" " * 65536

    settings = make_settings(max_json_bytes=256 * 1024, max_body_bytes=64 * 1024 * 1024)
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/evaluate", content=chunks(), headers={"content-type": "application/json"})
        assert answer.status_code == 413 and answer.json()["error"] == "too_large"
        assert "JSON body" in answer.json()["detail"]
        assert client.post("/v1/evaluate", content=b"[" * 100_000, headers={"content-type": "application/json"}
                           ).status_code == 422  # nested too deeply: refused, no RecursionError


# --- what the service tells about itself ---------------------------------------------------------------------

class Located(FakePredictor):
    def describe(self) -> dict:
        return {**super().describe(), "run": "/srv/cellgap/runs/pannuke-uni",
                "store_manifest": {"dataset": {"format": "folder", "path": "/data/private/cohort-7"}},
                "encoder": {"name": "uni", "weights": "C:\\models\\uni.safetensors"}}


def test_models_names_the_run_but_not_where_it_lies():
    settings = make_settings()
    app = create_app(settings, predictor_factory=lambda _: Located())
    with live_server(app, settings) as url:
        answer = httpx.get(f"{url}/v1/models", timeout=10)
    assert answer.status_code == 200
    run = answer.json()["models"][0]["run"]
    assert run["run"] == "pannuke-uni" and run["store_manifest"]["dataset"]["path"] == "cohort-7"
    assert run["encoder"]["weights"] == "uni.safetensors"
    assert "/srv" not in answer.text and "/data" not in answer.text and "models\\\\" not in answer.text


def test_the_openapi_schema_refuses_what_the_server_refuses():
    settings = make_settings()
    app = create_app(settings, predictor_factory=lambda _: FakePredictor())
    with live_server(app, settings) as url:
        schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    components = schema["components"]["schemas"]

    def form(path: str) -> dict:
        body = schema["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        return components[body["$ref"].rsplit("/", 1)[-1]] if "$ref" in body else body

    assert form("/v1/predict")["required"] == ["file"] and form("/v1/predict")["properties"]["file"]["minLength"] == 1
    for path, fields in (("/v1/predict/batch", ("files",)), ("/v1/evaluate", ("gt", "pred"))):
        assert set(fields) <= set(form(path)["required"])
        for field in fields:
            entry = form(path)["properties"][field]
            assert entry["minItems"] == 1 and entry["items"]["minLength"] == 1, (path, field, entry)
    labels = components["LabelArrays"]["properties"]
    assert labels["instances"]["minItems"] == 1 and labels["instances"]["items"]["minItems"] == 1
    assert components["EvaluateArrays"]["properties"]["images"]["minItems"] == 1


def test_a_batch_costlier_than_the_whole_queue_is_taken_when_the_queue_is_empty():
    from fastapi.testclient import TestClient

    settings = make_settings(queue_size=2, batch_size=4)
    tile = png_bytes(np.full((64, 64, 3), 200, np.uint8))
    with TestClient(create_app(settings, predictor_factory=lambda _: FakePredictor())) as client:
        answer = client.post("/v1/predict/batch", files=[("files", (f"{i}.png", tile)) for i in range(3)])
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["results"]) == 3
