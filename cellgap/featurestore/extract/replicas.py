"""Running a CPU encoder as replicas (by default one single-threaded replica per core), each on its own batches.

With intra-op threads, every operator of a forward pass is split over the cores and ends in a
barrier: when any other work (reading, converting, writing the store) takes one core for a few
milliseconds, the encoder's thread on the other core waits at the next barrier, so background work
costs the encoder about twice its own CPU time. Replicas share the model's weights, never wait for
each other, and lose only the CPU the background work takes. A forward pass then always runs on
one thread, so the stored features do not depend on how many cores the machine (or a dask worker)
has: multi-threaded convolutions sum in a different order and differ in their last bits.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def replica_count(device: torch.device, requested: int | None = None) -> int:
    """Replicas to run: as many as torch's intra-op threads on a CPU (one per core it was given), one on a GPU."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"replicas must be at least 1, not {requested}")
        return 1 if device.type != "cpu" else requested
    return 1 if device.type != "cpu" else max(1, torch.get_num_threads())


# torch's intra-op thread count is one setting per process. Replicas lower it while they run, so every
# change to it goes through this lock, and one set of replicas runs at a time in a process (a dask
# worker may run several tasks at once: each would otherwise start a replica per core, and one task's
# restore would hand another task's replicas every thread).
_PROCESS_THREADS = threading.Lock()


def set_process_threads(threads: int) -> None:
    """Set torch's intra-op threads for this process, waiting for running replicas to finish first."""
    with _PROCESS_THREADS:
        torch.set_num_threads(max(1, threads))


def set_cpu_threads(n_workers: int) -> None:
    """Share the machine's cores between local workers instead of each taking all of them."""
    set_process_threads((os.cpu_count() or 1) // max(1, n_workers))


@contextmanager
def threads_per_replica(replicas: int) -> Iterator[None]:
    """torch's intra-op threads shared out between the replicas while they run, restored afterwards; held
    for the whole run (see `_PROCESS_THREADS`)."""
    if replicas <= 1:
        yield
        return
    with _PROCESS_THREADS:
        before = torch.get_num_threads()
        torch.set_num_threads(max(1, before // replicas))
        try:
            yield
        finally:
            torch.set_num_threads(before)


class Worker(threading.Thread):
    """A daemon thread that records its exception for the caller to re-raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as error:  # handed to the calling thread, which re-raises it
            self.error = error


def run_replicas(replicas: int, loop: Callable[[], None], on_error: Callable[[], None]) -> None:
    """Run `loop` on the calling thread and on `replicas - 1` more threads, each taking its own work until
    none is left. `on_error` tells the other loops to stop when one fails; the first failure is raised
    once all have stopped (also after Ctrl-C, which can arrive while the calling thread waits for them)."""
    def guarded() -> None:
        try:
            loop()
        except BaseException:
            on_error()
            raise

    with threads_per_replica(replicas):
        others = [Worker(guarded, f"cellgap-replica-{i}") for i in range(1, replicas)]
        for thread in others:
            thread.start()
        try:
            loop()
            for thread in others:
                thread.join()
        except BaseException:
            on_error()
            for thread in others:
                thread.join()  # each stops after its current batch
            raise
        for thread in others:
            if thread.error is not None:
                raise thread.error
