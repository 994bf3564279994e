"""The dynamic batcher on its own, over fake batch functions."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cellgap.api.batcher import BatcherClosedError, DynamicBatcher, QueueFullError


def test_concurrent_items_share_batches_and_one_worker_thread():
    seen: list[list[int]] = []
    threads: set[str] = set()

    def double(items: list[int]) -> list[int]:
        seen.append(items)
        threads.add(threading.current_thread().name)
        time.sleep(0.01)
        return [2 * x for x in items]

    with DynamicBatcher(double, max_batch=4, max_wait_s=0.05, max_queue=100) as batcher:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda x: batcher.submit(x).result(5), range(32)))
    assert results == [2 * x for x in range(32)]
    assert max(len(b) for b in seen) == 4  # batches fill up to max_batch, never beyond
    assert len(seen) < 32
    assert len(threads) == 1
    assert batcher.stats.items == 32 and batcher.stats.largest_batch == 4


def test_a_lone_item_waits_at_most_max_wait():
    with DynamicBatcher(lambda items: items, max_batch=8, max_wait_s=0.02) as batcher:
        start = time.perf_counter()
        assert batcher.submit("x").result(5) == "x"
        assert time.perf_counter() - start < 0.5


def test_full_queue_refuses_at_once_and_recovers():
    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    batcher = DynamicBatcher(slow, max_batch=1, max_wait_s=0.0, max_queue=2).start()
    try:
        first = batcher.submit(0)
        time.sleep(0.05)  # the worker holds item 0; the queue is empty again
        waiting = [batcher.submit(1), batcher.submit(2)]
        with pytest.raises(QueueFullError):
            batcher.submit(3)
        release.set()
        assert [f.result(5) for f in (first, *waiting)] == [0, 1, 2]
        assert batcher.submit(4).result(5) == 4
    finally:
        release.set()
        batcher.close()


def test_queue_bound_counts_cost_and_takes_an_oversized_item_alone():
    release = threading.Event()
    batcher = DynamicBatcher(lambda items: (release.wait(5), items)[1], max_batch=4, max_wait_s=0.0,
                             max_queue=4).start()
    try:
        busy = batcher.submit("busy")
        time.sleep(0.05)
        big = batcher.submit("big", cost=10)  # larger than the queue, but the queue is empty: accepted
        with pytest.raises(QueueFullError):
            batcher.submit("small", cost=1)
        assert batcher.pending_cost == 10
        release.set()
        assert busy.result(5) == "busy" and big.result(5) == "big"
    finally:
        release.set()
        batcher.close()


def test_a_failing_item_fails_alone():
    def picky(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("13 is bad")
        return items

    with DynamicBatcher(picky, max_batch=8, max_wait_s=0.05) as batcher:
        futures = [batcher.submit(x) for x in (11, 12, 13, 14)]
        assert futures[0].result(5) == 11 and futures[3].result(5) == 14
        with pytest.raises(ValueError, match="13 is bad"):
            futures[2].result(5)
        assert batcher.submit(15).result(5) == 15  # the worker survives


def test_wrong_result_count_is_an_error_not_a_hang():
    with DynamicBatcher(lambda items: [], max_batch=2, max_wait_s=0.0) as batcher:
        with pytest.raises(RuntimeError, match="0 results for 1"):
            batcher.submit(1).result(5)


def test_close_fails_waiting_items_and_refuses_new_ones():
    release = threading.Event()
    batcher = DynamicBatcher(lambda items: (release.wait(5), items)[1], max_batch=1, max_wait_s=0.0).start()
    running = batcher.submit(1)
    time.sleep(0.05)
    waiting = batcher.submit(2)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    release.set()
    closer.join(5)
    assert running.result(5) == 1
    with pytest.raises(BatcherClosedError):
        waiting.result(5)
    with pytest.raises(BatcherClosedError):
        batcher.submit(3)
    assert not batcher.running


def test_submit_after_close_fails_at_once_and_close_is_idempotent():
    batcher = DynamicBatcher(lambda items: items, max_batch=2, max_wait_s=0.0).start()
    assert batcher.submit(1).result(5) == 1
    batcher.close()
    batcher.close()  # a second close is a no-op
    with pytest.raises(BatcherClosedError):
        batcher.submit(2)
    assert batcher.depth == 0 and batcher.pending_cost == 0  # nothing was enqueued behind the stop


def test_submit_racing_close_never_leaves_a_future_hanging():
    for _ in range(50):
        batcher = DynamicBatcher(lambda items: items, max_batch=4, max_wait_s=0.0).start()
        start = threading.Barrier(5)
        futures: list = []

        def submitter(batcher=batcher, start=start, futures=futures) -> None:
            start.wait()
            for i in range(20):
                try:
                    futures.append(batcher.submit(i))
                except BatcherClosedError:
                    return

        threads = [threading.Thread(target=submitter) for _ in range(4)]
        for thread in threads:
            thread.start()
        start.wait()
        batcher.close()
        for thread in threads:
            thread.join(5)
        for future in futures:  # each accepted item is either done or failed by close, never left pending
            assert future.done()
        assert batcher.depth == 0


def test_async_run_and_cancelled_items_are_skipped():
    release = threading.Event()
    calls: list[list[int]] = []

    def record(items):
        calls.append(list(items))
        release.wait(5)
        return items

    async def scenario(batcher: DynamicBatcher) -> None:
        first = asyncio.ensure_future(batcher.run(1))
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError):
            await batcher.run(2, timeout_s=0.05)  # cancelled while waiting: never run
        release.set()
        assert await first == 1
        assert await batcher.run(3) == 3

    with DynamicBatcher(record, max_batch=1, max_wait_s=0.0) as batcher:
        asyncio.run(scenario(batcher))
    assert [2] not in calls


def test_adaptive_mode_runs_a_lone_item_at_once_and_waits_for_announced_ones():
    seen: list[list[str]] = []
    batcher = DynamicBatcher(lambda items: (seen.append(list(items)), items)[1], max_batch=8, max_wait_s=1.0,
                             wait="adaptive").start()
    try:
        start = time.perf_counter()
        assert batcher.submit("alone").result(5) == "alone"
        assert time.perf_counter() - start < 0.5  # nothing announced: no wait for company
        with batcher.announce(2) as first, batcher.announce(1):
            future = batcher.submit("a", announcement=first)
            time.sleep(0.05)
            assert not future.done()  # two more are on their way
            second = batcher.submit("b", announcement=first)
            time.sleep(0.05)
            assert not future.done()  # the second announcement is still on its way
        assert future.result(5) == "a" and second.result(5) == "b"  # withdrawn on exit: the batch runs
        assert seen[-1] == ["a", "b"]
    finally:
        batcher.close()


@pytest.mark.parametrize("per_item_s, fixed_s, pays", [(0.02, 0.0, False), (0.001, 0.03, True)])
def test_adaptive_mode_waits_only_when_batching_pays(per_item_s, fixed_s, pays):
    """Linear cost (a CPU): no idle wait once measured. Large fixed cost (a GPU): batches are worth waiting for."""

    def model(items):
        time.sleep(fixed_s + per_item_s * len(items))
        return items

    batcher = DynamicBatcher(model, max_batch=4, max_wait_s=0.3, wait="adaptive").start()
    try:
        assert batcher.batching_pays  # unknown: assume it does
        batcher.submit(0).result(5)  # a single item
        with ThreadPoolExecutor(4) as pool:  # then batches
            for _ in range(2):
                list(pool.map(lambda x: batcher.submit(x).result(5), range(4)))
        assert batcher.batching_pays is pays
        with batcher.announce(1):
            start = time.perf_counter()
            batcher.submit("x").result(5)
            waited = time.perf_counter() - start - fixed_s - per_item_s
        assert (waited > 0.2) is pays  # an announced item is waited for only when batching pays
    finally:
        batcher.close()


def test_results_reach_callers_as_the_batch_function_yields_them():
    """A caller gets its item's result while the rest of its batch is still being computed."""
    go_on = threading.Event()

    def streaming(items: list[int]):
        for position, item in enumerate(items):
            if position == 1:
                assert go_on.wait(5)
            yield item * 10

    with DynamicBatcher(streaming, max_batch=2, max_wait_s=0.2) as batcher:
        first, second = batcher.submit(1), batcher.submit(2)
        assert first.result(5) == 10 and not second.done()
        go_on.set()
        assert second.result(5) == 20
        assert batcher.stats.batches == 1 and batcher.stats.largest_batch == 2


def test_a_batch_failing_midway_keeps_delivered_results_and_retries_the_rest_alone():
    calls: list[list[int]] = []

    def flaky(items: list[int]):
        calls.append(list(items))
        for item in items:
            if item == 13 and len(items) > 1:
                raise ValueError("13 fails in company")
            yield item

    with DynamicBatcher(flaky, max_batch=4, max_wait_s=0.2) as batcher:
        futures = [batcher.submit(x) for x in (11, 12, 13, 14)]
        assert [f.result(5) for f in futures] == [11, 12, 13, 14]
    assert calls == [[11, 12, 13, 14], [13], [14]]


def test_reserved_room_counts_against_the_queue_until_submitted_or_given_back():
    release = threading.Event()
    batcher = DynamicBatcher(lambda items: (release.wait(5), items)[1], max_batch=4, max_wait_s=0.0,
                             max_queue=4).start()
    try:
        busy = batcher.submit("busy")
        time.sleep(0.05)  # the worker holds it: the queue is empty
        held = batcher.reserve(3)
        assert batcher.pending_cost == 3 and not batcher.full
        with pytest.raises(QueueFullError):
            batcher.reserve(2)  # 3 reserved + 2 > 4: refused before the item exists
        with batcher.reserve(1) as given_back:
            assert batcher.full
        assert given_back.cost == 0 and batcher.pending_cost == 3
        item = batcher.submit("held", cost=3, reservation=held)  # the reserved room becomes the item's
        assert held.cost == 0 and batcher.pending_cost == 3
        held.release()  # a no-op once submitted
        assert batcher.pending_cost == 3
        release.set()
        assert busy.result(5) == "busy" and item.result(5) == "held"
        assert batcher.pending_cost == 0
    finally:
        release.set()
        batcher.close()
    with pytest.raises(BatcherClosedError):
        batcher.reserve(1)
