"""`cellgap bench api`: the served model against in-process prediction, measured in one run on one machine.

In-process: `predict_batch` latency for one tile and throughput for batches of `--clients` tiles.
Over HTTP (a real `cellgap serve` process on loopback): p50/p95 latency of the same tile one
request at a time, and throughput with 1 and `--clients` concurrent clients. Targets: HTTP p50 <=
1.25x in-process, concurrent throughput >= 0.9x in-process batch throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from cellgap.api.errors import ApiError

LATENCY_TARGET = 1.25
THROUGHPUT_TARGET = 0.9


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_in_subprocess(run_dir: Path | None, *, port: int | None = None, env: dict[str, str] | None = None,
                        args: Sequence[str] = (), ready_timeout_s: float = 120.0,
                        stdout: int = subprocess.DEVNULL) -> Iterator[tuple[str, subprocess.Popen]]:
    """`cellgap serve` on 127.0.0.1 in a child process; yields (base URL, process) once /readyz answers 200.
    The access log goes to stdout (uvicorn's choice): pass `subprocess.PIPE` to read it."""
    port = port or free_port()
    command = [sys.executable, "-m", "cellgap.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    if run_dir is not None:
        command += ["--run", str(run_dir)]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=stdout,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read() if process.stderr is not None else ""
                raise ApiError(f"the server exited with code {process.returncode}: {stderr[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ApiError(f"the server was not ready within {ready_timeout_s:g} s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stderr is not None:
            process.stderr.close()


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _timed(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def _post(client: httpx.Client, url: str, body: bytes) -> None:
    answer = client.post(f"{url}/v1/predict", files={"file": ("tile.png", body, "image/png")})
    if answer.status_code != 200:
        raise ApiError(f"the server answered {answer.status_code}: {answer.text[:300]}")


def _http_throughput(url: str, body: bytes, clients: int, requests: int) -> float:
    """Tiles per second with `clients` concurrent clients sending `requests` in total."""
    per_client = max(1, requests // clients)

    def work(_: int) -> None:
        with httpx.Client(timeout=300.0) as client:
            for _ in range(per_client):
                _post(client, url, body)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(work, range(clients)))
    return per_client * clients / (time.perf_counter() - start)


def measure(args: argparse.Namespace) -> dict:
    """Every number of the table. In-process and HTTP measurements alternate (never run at once), so a
    change of machine load during the run affects both sides alike."""
    from cellgap.api.render import encode_png
    from cellgap.api.service import load_predictor
    from cellgap.api.settings import Settings
    from cellgap.featurestore.datasets.synthetic import make_tile

    settings = Settings(run_dir=args.run, device=args.device, threads=args.threads)
    predictor = load_predictor(settings)
    tile = make_tile(0, size=predictor.tile_size).image
    batch = [tile] * args.clients
    body = encode_png(tile)
    env = {"CELLGAP_BATCH_SIZE": str(max(args.clients, 1))}
    extra = ["--device", args.device, "--log-level", "warning"] + (["--threads", str(args.threads)] if args.threads else [])
    with serve_in_subprocess(args.run, port=args.port, env=env, args=extra) as (url, _), \
            httpx.Client(timeout=300.0) as client:
        for _ in range(2):  # warm every shape on both sides
            predictor.predict_batch([tile])
            predictor.predict_batch(batch)
            _post(client, url, body)
            _http_throughput(url, body, args.clients, args.clients)
        single, http = [], []
        for _ in range(args.requests):
            single += _timed(lambda: predictor.predict_batch([tile]), 1)
            http += _timed(lambda: _post(client, url, body), 1)
        rounds = max(2, args.requests // args.clients)  # batches (in-process) or requests per client, per block
        in_process_s, one_client, many_clients = 0.0, [], []
        for _ in range(2):
            in_process_s += sum(_timed(lambda: predictor.predict_batch(batch), rounds))
            one_client.append(_http_throughput(url, body, 1, rounds * args.clients // 2))
            many_clients.append(_http_throughput(url, body, args.clients, rounds * args.clients))
    in_process_tps = args.clients * rounds * 2 / in_process_s
    in_p50, http_p50 = statistics.median(single), statistics.median(http)
    return {
        "tile_size": int(tile.shape[0]), "device": args.device, "threads": args.threads, "requests": args.requests,
        "clients": args.clients,
        "in_process_p50_s": in_p50, "in_process_p95_s": _percentile(single, 95),
        "http_p50_s": http_p50, "http_p95_s": _percentile(http, 95),
        "http_p50_ratio": http_p50 / in_p50,
        "in_process_batch_tiles_per_s": in_process_tps,
        "http_1_client_tiles_per_s": statistics.mean(one_client),
        "http_n_clients_tiles_per_s": statistics.mean(many_clients),
        "throughput_ratio": statistics.mean(many_clients) / in_process_tps,
        "latency_target": LATENCY_TARGET, "throughput_target": THROUGHPUT_TARGET,
    }


def format_table(result: dict) -> str:
    ok = {True: "ok", False: "MISSED"}
    n = result["clients"]
    lines = [
        f"cellgap bench api: tile {result['tile_size']} px, device {result['device']}, "
        f"{result['requests']} requests per measurement",
        "",
        f"{'measurement':<44}{'value':>12}",
        f"{'in-process predict, one tile, p50':<44}{result['in_process_p50_s'] * 1000:>9.1f} ms",
        f"{'in-process predict, one tile, p95':<44}{result['in_process_p95_s'] * 1000:>9.1f} ms",
        f"{'HTTP /v1/predict, one tile, p50':<44}{result['http_p50_s'] * 1000:>9.1f} ms",
        f"{'HTTP /v1/predict, one tile, p95':<44}{result['http_p95_s'] * 1000:>9.1f} ms",
        f"{f'in-process batch of {n}':<44}{result['in_process_batch_tiles_per_s']:>7.2f} tiles/s",
        f"{'HTTP, 1 client':<44}{result['http_1_client_tiles_per_s']:>7.2f} tiles/s",
        f"{f'HTTP, {n} concurrent clients':<44}{result['http_n_clients_tiles_per_s']:>7.2f} tiles/s",
        "",
        f"HTTP p50 / in-process p50: {result['http_p50_ratio']:.2f}x (target <= {LATENCY_TARGET}x) "
        f"{ok[result['http_p50_ratio'] <= LATENCY_TARGET]}",
        f"{n}-client HTTP / in-process batch throughput: {result['throughput_ratio']:.2f}x "
        f"(target >= {THROUGHPUT_TARGET}x) {ok[result['throughput_ratio'] >= THROUGHPUT_TARGET]}",
    ]
    return "\n".join(lines) + "\n"


def run_benchmark(args: argparse.Namespace) -> int:
    result = measure(args)
    sys.stdout.write(format_table(result))
    if args.json is not None:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        except OSError as error:
            raise ApiError(f"cannot write {args.json}: {error}") from None
    return 0
