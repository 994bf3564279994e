"""Running the grid: store jobs first, each store's runs as soon as it is ready, one job per slot.

Slots are this process (`--jobs 1`, in sequence), N spawned worker processes (`--jobs N`), or the
workers of a dask.distributed cluster (`--scheduler ADDRESS`: every job is pinned to one free
worker, so each worker runs one job at a time; dask-cuda workers each own one GPU). Finished runs
are skipped before anything is sent; progress is reported line by line through `say`, with a bar
over jobs when stderr is a terminal; REPORT_DIR/state.json mirrors where every job stands.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cellgap.compare.config import CompareConfig
from cellgap.compare.errors import CompareError, one_line
from cellgap.compare.grid import Grid, RunJob, StoreJob, expand
from cellgap.compare.runs import (
    RunOutcome,
    execute_run,
    run_status,
    skipped_outcome,
)
from cellgap.compare.stores import StoreOutcome, prepare_store
from cellgap.core.atomic import write_atomically
from cellgap.core.progress import progress_bar

if TYPE_CHECKING:
    from distributed import Future as DaskFuture

log = logging.getLogger(__name__)
Say = Callable[[str], None]


def _init_process(n_processes: int) -> None:
    from cellgap.featurestore.extract.replicas import set_cpu_threads

    set_cpu_threads(n_processes)


class InlineSlots:
    """One slot: jobs run here, in sequence, when submitted."""

    def slots(self) -> list[str]:
        return ["local"]

    def submit(self, slot: str, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - reported per job; KeyboardInterrupt still stops the grid
            future.set_exception(error)
        return future

    def close(self) -> None:
        pass


class ProcessSlots:
    """N worker processes (spawned: a clean torch each), sharing the CPU cores between them."""

    def __init__(self, n: int) -> None:
        import multiprocessing

        self.n = n
        self.pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_init_process,
                                        initargs=(n,))

    def slots(self) -> list[str]:
        return [f"process {k + 1}" for k in range(self.n)]

    def submit(self, slot: str, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        return self.pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskSlots:
    """The workers of a dask.distributed cluster; each job is pinned to one free worker."""

    def __init__(self, address: str, wait_seconds: float = 60.0) -> None:
        from distributed import Client

        try:
            self.client = Client(address, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise CompareError(f"cannot reach the dask scheduler at {address} ({one_line(error)})") from None
        try:
            self.client.wait_for_workers(1, timeout=wait_seconds)
        except (TimeoutError, OSError):
            self.client.close()
            raise CompareError(f"the dask scheduler at {address} has no workers "
                               f"(waited {wait_seconds:.0f} s)") from None

    def slots(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def submit(self, slot: str, fn: Callable, *args: Any, **kwargs: Any) -> DaskFuture:
        name = getattr(fn, "__name__", "job")
        return self.client.submit(fn, *args, workers=[slot], allow_other_workers=False, pure=False,
                                  key=f"cellgap-compare-{name}-{os.urandom(6).hex()}", **kwargs)

    def close(self) -> None:
        self.client.close()


@dataclass
class CompareSummary:
    report_dir: Path
    grid: Grid
    stores: dict[tuple, StoreOutcome] = field(default_factory=dict)
    runs: dict[str, RunOutcome] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (job, error)

    @property
    def finished(self) -> set[str]:
        return set(self.runs)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        outcomes: list[StoreOutcome | RunOutcome] = [*self.stores.values(), *self.runs.values()]
        for outcome in outcomes:
            found[outcome.action] = found.get(outcome.action, 0) + 1
        if self.failures:
            found["failed"] = len(self.failures)
        return found


class _State:
    """REPORT_DIR/state.json: every job's status, rewritten (atomically) on every change."""

    def __init__(self, path: Path, grid: Grid) -> None:
        self.path = path
        self.jobs: dict[str, dict[str, Any]] = {f"store: {s.key}": {"status": "pending"} for s in grid.stores}
        self.jobs.update({f"run: {r.key}": {"status": "pending"} for r in grid.runs})
        self.write()

    def set(self, name: str, **values: Any) -> None:
        self.jobs[name] = {**values, "at": datetime.now(UTC).isoformat(timespec="seconds")}
        self.write()

    def write(self) -> None:
        write_atomically(self.path, json.dumps({"jobs": self.jobs}, indent=1) + "\n")


def make_slots(jobs: int, scheduler: str | None):
    if scheduler:
        return DaskSlots(scheduler)
    return ProcessSlots(jobs) if jobs > 1 else InlineSlots()


def run_grid(config: CompareConfig, report_dir: Path, *, jobs: int = 1, scheduler: str | None = None,
             device: str | None = None, progress: bool = True, say: Say = lambda line: None) -> CompareSummary:
    """Build or reuse every store, bring every run to finished; failures are collected, not raised."""
    grid = expand(config)
    report_dir = Path(report_dir).resolve()
    (report_dir / "stores").mkdir(parents=True, exist_ok=True)
    for line in grid.describe():
        say(line)
    summary = CompareSummary(report_dir, grid)
    state = _State(report_dir / "state.json", grid)
    store_number = {s.settings_key: k for k, s in enumerate(grid.stores, start=1)}
    run_number = {r.key: k for k, r in enumerate(grid.runs, start=1)}
    n_stores, n_runs = len(grid.stores), len(grid.runs)
    pending_stores: deque[StoreJob] = deque(grid.stores)
    ready_runs: deque[RunJob] = deque()
    in_flight: dict[str, tuple[StoreJob | RunJob, Future, float]] = {}
    finished_slots: queue.Queue[str] = queue.Queue()
    job_device, extra_roots = device, [Path(p) for p in config.store_dirs]
    worker_progress = progress and scheduler is None and jobs == 1
    slots = make_slots(jobs, scheduler)

    def name_of(job: StoreJob | RunJob) -> str:
        if isinstance(job, StoreJob):
            return f"[store {store_number[job.settings_key]}/{n_stores}] {job.key}"
        return f"[run {run_number[job.key]}/{n_runs}] {job.key}"

    def running(excluding: str | None = None) -> str:
        names = [name_of(job).split("] ", 1)[1] for slot, (job, _, _) in in_flight.items() if slot != excluding]
        return f" (also running: {'; '.join(names)})" if names else ""

    def next_job() -> StoreJob | RunJob | None:
        while ready_runs:
            run = ready_runs.popleft()
            store = summary.stores[run.store.settings_key]
            wanted = config.train_config(store=store.path, out=run.run_dir(report_dir), seed=run.seed, device=device)
            status, reason = run_status(run.run_dir(report_dir), wanted, store.manifest)
            if status != "finished":
                run_status_note[run.key] = reason if status != "new" else ""
                return run
            outcome = skipped_outcome(run, run.run_dir(report_dir))
            summary.runs[run.key] = outcome
            say(f"{name_of(run)}: skipped (finished earlier; {outcome.line().split(': ', 1)[1]})")
            state.set(f"run: {run.key}", status="skipped", run_dir=outcome.run_dir)
            bar.update(1)
        return pending_stores.popleft() if pending_stores else None

    run_status_note: dict[str, str] = {}
    with progress_bar(n_stores + n_runs, "compare", unit="job", enabled=progress) as bar:
        try:
            while True:
                for slot in slots.slots():
                    if slot in in_flight:
                        continue
                    job = next_job()
                    if job is None:
                        break
                    started = time.perf_counter()
                    if isinstance(job, StoreJob):
                        say(f"{name_of(job)}: start (find or build the store){running()}")
                        state.set(f"store: {job.key}", status="running", slot=slot)
                        future = slots.submit(slot, prepare_store, job, report_dir / "stores", extra_roots,
                                              config.extract, device=job_device, progress=worker_progress)
                    else:
                        note = run_status_note.get(job.key) or "new"
                        say(f"{name_of(job)}: start ({note}){running()}")
                        state.set(f"run: {job.key}", status="running", slot=slot)
                        store = summary.stores[job.store.settings_key]
                        future = slots.submit(slot, execute_run, job, config, store, report_dir, device=job_device,
                                              progress=worker_progress)
                    in_flight[slot] = (job, future, started)
                    future.add_done_callback(lambda _, slot=slot: finished_slots.put(slot))
                if not in_flight:
                    break
                slot = finished_slots.get()
                job, future, started = in_flight.pop(slot)
                seconds = time.perf_counter() - started
                try:
                    outcome = future.result()
                except Exception as error:  # noqa: BLE001 - one failed job does not stop the grid
                    _fail(summary, state, job, error, grid, say, name_of, bar)
                    continue
                bar.update(1)
                if isinstance(job, StoreJob):
                    summary.stores[job.settings_key] = outcome
                    say(f"{name_of(job)}: {outcome.line()} in {seconds:.1f} s{running()}")
                    state.set(f"store: {job.key}", status=outcome.action, path=outcome.path)
                    ready_runs.extend(grid.runs_of(job))
                else:
                    summary.runs[job.key] = outcome
                    say(f"{name_of(job)}: {outcome.line()} in {seconds:.1f} s{running()}")
                    state.set(f"run: {job.key}", status=outcome.action, run_dir=outcome.run_dir)
        finally:
            slots.close()
    return summary


def _fail(summary: CompareSummary, state: _State, job: StoreJob | RunJob, error: BaseException, grid: Grid,
          say: Say, name_of: Callable, bar) -> None:
    message = one_line(error) or type(error).__name__
    log.debug("job failed", exc_info=error)
    say(f"{name_of(job)}: FAILED: {type(error).__name__}: {message}")
    summary.failures.append((job.key, f"{type(error).__name__}: {message}"))
    bar.update(1)
    if isinstance(job, StoreJob):
        state.set(f"store: {job.key}", status="failed", error=message)
        for run in grid.runs_of(job):
            state.set(f"run: {run.key}", status="not run", error="its store failed")
            bar.update(1)
    else:
        state.set(f"run: {job.key}", status="failed", error=message)
