"""`cellgap bench threads`: decoder training steps on a machine that another process keeps busy.

Every condition runs in a fresh child process (OpenMP reads its settings once, when torch loads):
the machine idle with one thread per core; then, with a competing process spinning on one core,
one thread per core (torch's default), one thread, and the count `cellgap` chooses from the idle
cores (cellgap/core/threads.py). Rounds alternate the order; the table gives medians.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cellgap.core.benchtools import report_rows
from cellgap.core.threads import busy_cores, plan_threads, usable_cores

# ConvNeXt-atto's four stages on a 256 px tile: the demo-sized decoder's inputs
_LAYERS = [("stage0", 4.0, 40, 64), ("stage1", 8.0, 80, 32), ("stage2", 16.0, 160, 16), ("stage3", 32.0, 320, 8)]


def training_steps(steps: int, batch_size: int = 4) -> float:
    """Seconds per optimiser step of the small decoder on random stored-feature-shaped tensors (after 2 warm-ups)."""
    import torch

    from cellgap.decoder.networks import CellDecoder, DecoderConfig, network_spec, on_device
    from cellgap.featurestore.encoders.description import LayerInfo

    torch.manual_seed(0)
    layers = [LayerInfo(name=n, index=i, stride=s, channels=c, height=h, width=h)
              for i, (n, s, c, h) in enumerate(_LAYERS)]
    model = on_device(CellDecoder(network_spec(layers, "hierarchical", 256, 3, DecoderConfig())), "cpu")
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    features = [torch.randn(batch_size, c, h, h) for _, _, c, h in _LAYERS]
    image = torch.rand(batch_size, 3, 256, 256)

    def step() -> None:
        outputs = model(features, image)
        loss = sum(value.float().mean() for value in outputs.values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


@dataclass
class ThreadsBenchRow:
    condition: str
    threads: int
    seconds_per_step: float
    over_idle: float  # slowdown against the idle machine with one thread per core


@contextmanager
def busy_core() -> Iterator[None]:
    """A competing process that keeps one core busy, as a notebook or a viewer does."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        competitor.kill()
        competitor.wait()


def _child(threads: int, steps: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "cellgap.decoder.bench_threads", str(steps)], env=env,
                          capture_output=True, text=True, timeout=3600, check=True)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds_per_step"])


def run_threads_bench(steps: int = 20, rounds: int = 3, json_path: Path | None = None) -> list[ThreadsBenchRow]:
    cores = usable_cores()
    timings: dict[str, list[float]] = {}
    chosen: dict[str, list[int]] = {}
    for round_ in range(rounds):
        conditions = ["idle", "busy, one per core", "busy, one", "busy, cellgap's choice"]
        for condition in conditions if round_ % 2 == 0 else conditions[::-1]:
            if condition == "idle":
                threads, seconds = cores, _child(cores, steps)
            else:
                with busy_core():
                    if condition == "busy, cellgap's choice":
                        threads = plan_threads(environ={}, busy=busy_cores()).threads
                    else:
                        threads = cores if condition == "busy, one per core" else 1
                    seconds = _child(threads, steps)
            timings.setdefault(condition, []).append(seconds)
            chosen.setdefault(condition, []).append(threads)
            print(f"round {round_ + 1}: {condition:<24} {threads} threads {seconds * 1000:8.1f} ms/step", flush=True)
    idle = statistics.median(timings["idle"])
    rows = [ThreadsBenchRow(condition, int(statistics.median(chosen[condition])), statistics.median(values),
                            statistics.median(values) / idle) for condition, values in timings.items()]
    report_rows(rows, format_rows, json_path)
    return rows


def format_rows(rows: list[ThreadsBenchRow]) -> str:
    header = f"{'condition':<24} {'threads':>7} {'ms/step':>9} {'vs idle':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.condition:<24} {r.threads:7d} {r.seconds_per_step * 1000:9.1f} {r.over_idle:8.2f}")
    return "\n".join(lines)


if __name__ == "__main__":  # one condition's child process
    print(json.dumps({"seconds_per_step": training_steps(int(sys.argv[1]))}))
