"""Post-processing (maps -> instances) on a pool of worker processes, so that it keeps up with the decoder.

Post-processing is single-threaded numpy/scipy work of about 11 ms per 256 px tile, while a GPU's forward
pass takes far less: in one process, prediction and validation wait on it. The pool runs the very same
`instances_of` in other processes and hands results back in input order, so its output is identical
to the in-process code. `workers` 0 or 1 is in-process (no pool at all).
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType

from cellgap.decoder.inference import TileMaps, instances_of
from cellgap.decoder.postprocess import Instances, PostprocessConfig


def default_workers() -> int:
    """One process per core the decoder leaves free, at most 8; 0 (in-process) on one or two cores,
    where a pool would only take the core the forward pass needs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if cores <= 2 else min(cores - 1, 8)


class PostprocessPool:
    """`with PostprocessPool(config, workers) as pool: pool.map(maps)`; the processes end with the block,
    on an error or Ctrl-C too (pending work is cancelled, running work finishes, nothing is left behind)."""

    def __init__(self, config: PostprocessConfig, workers: int) -> None:
        if workers < 0:
            raise ValueError(f"post-processing workers must be >= 0, got {workers}")
        self.config, self.workers = config, workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> PostprocessPool:
        if self.workers > 1:  # spawn: the parent may hold CUDA and torch threads, which fork does not copy safely
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(cancel=kind is not None)

    def close(self, cancel: bool = False) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
            self._executor = None

    def submit(self, maps: TileMaps) -> Future[Instances]:
        """One tile's instances, computed in a worker (or right here without a pool)."""
        if self._executor is None:
            done: Future[Instances] = Future()
            done.set_result(instances_of(maps, self.config))
            return done
        return self._executor.submit(instances_of, maps, self.config)

    def map(self, tiles: Iterable[TileMaps]) -> Iterator[Instances]:
        """Instances of every tile, in input order."""
        for future in [self.submit(maps) for maps in tiles]:
            yield future.result()
