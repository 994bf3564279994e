"""Fixtures of the service tests: a fake predictor (fast, deterministic), apps around it, a real tiny run."""
from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cellgap.api.app import create_app
from cellgap.api.settings import Settings
from cellgap.decoder.postprocess import Instances

TILE = 64


class FakePredictor:
    """Dark blobs of the image are the nuclei; class = 1 + (id % 2). Counts its calls; optional delay."""

    class_names = ("tumour", "immune")
    tile_size = TILE
    model_id = "fake@0123456789"
    mpp = 0.5

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.images = 0
        self.image_batch_sizes: list[int] = []  # batch_size of each predict_image call
        self.threads: set[str] = set()
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"model_id": self.model_id, "encoder": {"name": "fake"}, "layers": [], "tile_size": TILE,
                "classes": {"1": "tumour", "2": "immune"}, "training": {"metric": float("nan"), "epoch": 1},
                "store_manifest": {"schema_version": 1}}

    def _instances(self, image: np.ndarray) -> Instances:
        from scipy import ndimage as ndi

        labels, n = ndi.label(image.mean(axis=-1) < 100)
        classes = (1 + np.arange(1, n + 1) % 2).astype(np.int32)
        return Instances(labels.astype(np.int32), classes, np.full(n, 0.75, np.float32), np.full(n, 0.75, np.float32))

    def predict_batch(self, images: list[np.ndarray]) -> list[Instances]:
        assert all(image.shape == (TILE, TILE, 3) and image.dtype == np.uint8 for image in images)
        with self._lock:
            self.batches.append(len(images))
            self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return [self._instances(image) for image in images]

    def iter_batch(self, images: list[np.ndarray]):
        yield from self.predict_batch(images)

    def predict_image(self, image: np.ndarray, batch_size: int = 8) -> Instances:
        with self._lock:
            self.images += 1
            self.image_batch_sizes.append(batch_size)
            self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        return self._instances(image)


def blob_tile(size: int = TILE, blobs: tuple[tuple[int, int], ...] = ((16, 16), (40, 44))) -> np.ndarray:
    """A light (H,W,3) uint8 tile with a dark 9x9 square per blob centre (row, column)."""
    image = np.full((size, size, 3), 220, np.uint8)
    for row, col in blobs:
        image[row - 4 : row + 5, col - 4 : col + 5] = 40
    return image


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def make_settings(**overrides) -> Settings:
    base = {"run_dir": None, "batch_wait_ms": 2.0, "max_image_pixels": 512 * 512, "max_body_bytes": 4 * 1024 * 1024}
    return Settings(**{**base, **overrides})


@pytest.fixture
def fake() -> FakePredictor:
    return FakePredictor()


@pytest.fixture
def client(fake: FakePredictor):
    app = create_app(make_settings(), predictor_factory=lambda _: fake)
    with TestClient(app) as test_client:
        yield test_client


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # torch on a small shared CPU: 1 thread is fastest


def build_tiny_run(root: Path) -> Path:
    """A real trained run made by the real commands: 8 synthetic tiles, convnext_atto random weights, 1 epoch."""
    import os
    import subprocess
    import sys

    store, run = root / "store.zarr", root / "run"
    env = {**os.environ, **ONE_THREAD}
    for command in (["extract", "--dataset", "synthetic:8", "--encoder", "convnext_atto", "--pretrained", "false",
                     "--store", str(store), "--device", "cpu", "--no-progress"],
                    ["train", "--store", str(store), "--out", str(run), "--epochs", "1", "--decoder", "small",
                     "--device", "cpu", "--no-progress"]):
        done = subprocess.run([sys.executable, "-m", "cellgap.cli", *command], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"cellgap {command[0]} failed: {done.stderr[-2000:]}"
    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("tiny-run"))


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


KEY = "test-key-0123"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="session")
def server_slides(tmp_path_factory) -> Path:
    """The slides root of the `server` fixture (empty: tests write the slides they read)."""
    return tmp_path_factory.mktemp("server-slides")


@pytest.fixture(scope="session")
def server(tiny_run, server_slides):
    """`cellgap serve` on loopback over the tiny run, with an API key, small limits and a slides root;
    (client, process)."""
    import httpx

    from cellgap.api.bench import serve_in_subprocess

    env = {**ONE_THREAD, "CELLGAP_API_KEY": KEY, "CELLGAP_MAX_BODY_BYTES": str(8 * 1024 * 1024),
           "CELLGAP_MAX_IMAGE_PIXELS": str(1024 * 1024), "CELLGAP_SLIDES_ROOT": str(server_slides)}
    with serve_in_subprocess(tiny_run, env=env, args=["--device", "cpu", "--log-level", "warning"]) as (url, process):
        with httpx.Client(base_url=url, headers=AUTH, timeout=120.0) as client:
            yield client, process


@contextmanager
def live_server(app, settings: Settings, timeout_s: float = 20.0) -> Iterator[str]:
    """The app under a real uvicorn server (the one `cellgap serve` configures) on loopback, in a thread of
    this process (so a test can use a fake predictor and look at the app's state); yields the base URL."""
    import uvicorn

    from cellgap.api.bench import free_port
    from cellgap.api.server import uvicorn_config

    port = free_port()
    server = uvicorn.Server(uvicorn_config(app, settings, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
