"""CPU encoder replicas: batches of one shard finished out of order land in their own rows, the features are
the single-threaded forward pass's, a failing replica ends the job with its error, and torch's thread setting
comes back as it was."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from cellgap.featurestore.datasets import open_dataset
from cellgap.featurestore.encoders.encoder import EncoderSettings, FrozenEncoder
from cellgap.featurestore.extract.replicas import replica_count, run_replicas, threads_per_replica
from cellgap.featurestore.extract.shards import encode_shards
from cellgap.featurestore.store import open_store
from cellgap.featurestore.store.manifest import StorageRecord, new_manifest
from cellgap.featurestore.store.writer import open_or_create
from tests.conftest import error_of, torch_threads
from tests.featurestore.test_store import extract


@pytest.fixture(scope="module")
def encoder() -> FrozenEncoder:
    return FrozenEncoder(EncoderSettings(name="convnext_atto", pretrained=False), device="cpu")


@pytest.fixture
def two_threads():
    with torch_threads(2):
        yield


def _writer(path, encoder, dataset, shard_tiles=4):
    metas = dataset.metas()
    storage = StorageRecord(dtype="float32", codec="none", shard_tiles=shard_tiles)
    writer, _ = open_or_create(str(path), new_manifest(encoder.description, dataset.info, metas, storage), metas)
    return writer


def test_replica_count_follows_torch_threads_on_a_cpu_and_is_one_on_a_gpu(two_threads):
    assert replica_count(torch.device("cpu")) == 2
    assert replica_count(torch.device("cpu"), 3) == 3
    assert replica_count(torch.device("cuda")) == 1
    assert replica_count(torch.device("cuda"), 4) == 1
    with pytest.raises(ValueError, match="at least 1"):
        replica_count(torch.device("cpu"), 0)


def test_replicas_share_out_threads_and_give_them_back_even_after_an_error(two_threads):
    seen: list[int] = []
    lock = threading.Lock()

    def loop() -> None:
        with lock:
            seen.append(torch.get_num_threads())

    run_replicas(2, loop, on_error=lambda: None)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    with threads_per_replica(1):
        assert torch.get_num_threads() == 2  # one replica keeps every thread

    stopped = threading.Event()

    def failing() -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("replica broke")
        stopped.wait(10)  # the main replica runs until told to stop

    with pytest.raises(RuntimeError, match="replica broke"):
        run_replicas(2, failing, on_error=stopped.set)
    assert stopped.is_set() and torch.get_num_threads() == 2


def test_batches_finished_out_of_order_land_in_their_rows(tmp_path, encoder, monkeypatch, two_threads):
    """Batch size 1 and 4-tile shards: the first batch of each shard is slowed down, so the other replica
    finishes later batches of the same shard before it."""
    dataset = open_dataset("synthetic:8")
    writer = _writer(tmp_path / "s.zarr", encoder, dataset)
    real_call = FrozenEncoder.__call__
    order: list[int] = []
    first_pixels = {dataset[i].image[:2, :2].tobytes(): i for i in range(8)}

    def slow_first_of_shard(self, tiles):
        tile = first_pixels[tiles[0, :2, :2].numpy().tobytes()]
        if tile % 4 == 0:
            time.sleep(0.3)
        features = real_call(self, tiles)
        order.append(tile)
        return features

    monkeypatch.setattr(FrozenEncoder, "__call__", slow_first_of_shard)
    assert encode_shards(dataset, encoder, writer, [0, 1], batch_size=1, replicas=2) == 8
    assert order != sorted(order), "the replicas finished in order; the test did not exercise reordering"
    monkeypatch.setattr(FrozenEncoder, "__call__", real_call)

    store = open_store(str(tmp_path / "s.zarr"))
    assert store.done.all()
    images = np.stack([dataset[i].image for i in range(8)])
    assert np.array_equal(store.read_images(np.arange(8)), images)
    torch.set_num_threads(1)  # the replicas' forward pass is single-threaded
    expected = [torch.cat(parts).numpy() for parts in zip(*(encoder(torch.from_numpy(images[i:i + 1])) for i in range(8)))]
    for layer, values in zip(store.manifest.layer_names, expected):
        assert np.array_equal(store.read_stored_features(np.arange(8), layer)[0], values)


def test_a_store_is_the_same_with_one_or_two_single_threaded_replicas(tmp_path, two_threads):
    extract(tmp_path / "two.zarr", dataset="synthetic:6", shard_tiles=2, batch_size=1)
    torch.set_num_threads(1)
    extract(tmp_path / "one.zarr", dataset="synthetic:6", shard_tiles=2, batch_size=1)
    one, two = open_store(str(tmp_path / "one.zarr")), open_store(str(tmp_path / "two.zarr"))
    for layer in one.manifest.layer_names:
        assert np.array_equal(one.read_stored_features(np.arange(6), layer)[0],
                              two.read_stored_features(np.arange(6), layer)[0])


def test_a_failing_replica_ends_the_extraction_with_its_error(tmp_path, encoder, monkeypatch, two_threads):
    dataset = open_dataset("synthetic:8")
    writer = _writer(tmp_path / "s.zarr", encoder, dataset)
    real_call = FrozenEncoder.__call__
    calls = [0]
    lock = threading.Lock()

    def failing(self, tiles):
        with lock:
            calls[0] += 1
            broken = calls[0] == 6
        if broken:
            raise RuntimeError("out of memory in a replica")
        return real_call(self, tiles)

    monkeypatch.setattr(FrozenEncoder, "__call__", failing)
    error = error_of(lambda: encode_shards(dataset, encoder, writer, [0, 1], batch_size=1, replicas=2), 60)
    assert error is not None and "out of memory in a replica" in str(error)
    assert torch.get_num_threads() == 2
    done = open_store(str(tmp_path / "s.zarr")).done
    assert not done[4:].any()  # the shard whose batch failed is not marked done


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_values_beyond_float16_are_stored_as_its_largest_finite_value(dtype):
    from cellgap.featurestore.extract.shards import _store_into
    from cellgap.featurestore.store.shardfile import ShardBuffer, ShardLayout
    from cellgap.featurestore.store.writer import FeatureShard

    values = torch.tensor([[1.5, -2.25, 1e6, -1e6, float("inf"), float("-inf"), float("nan"), 65504.0]]).view(1, 1, 2, 4)
    target = FeatureShard(ShardBuffer(ShardLayout(2, (1, 2, 4), np.dtype(dtype)), 2), None)
    _store_into(target, 1, values, dtype)
    stored = target.values.tiles[1].ravel().astype(np.float64)
    if dtype == "float16":
        expected = [1.5, -2.25, 65504, -65504, 65504, -65504, np.nan, 65504]
    else:
        expected = [1.5, -2.25, 1e6, -1e6, np.inf, -np.inf, np.nan, 65504]
    np.testing.assert_array_equal(stored, expected)
    in_range = torch.full((1, 1, 2, 4), 3.0)
    _store_into(target, 0, in_range, dtype)
    assert (target.values.tiles[0] == 3.0).all()
    without_nan = torch.tensor([7e4, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -7.0]).view(1, 1, 2, 4)  # overflow alone
    _store_into(target, 0, without_nan, dtype)
    assert target.values.tiles[0].ravel()[0] == (65504 if dtype == "float16" else 7e4)


def test_replicas_of_two_jobs_in_one_process_take_turns(two_threads):
    """A dask worker may run two extraction tasks at once: their replicas must not overlap (each would
    take a core per replica, and one job's restore would give the other's replicas every thread)."""
    spans: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def job() -> None:
        def loop() -> None:
            started = time.perf_counter()
            time.sleep(0.2)
            with lock:
                spans.append((started, time.perf_counter(), torch.get_num_threads()))

        run_replicas(2, loop, on_error=lambda: None)

    jobs = [threading.Thread(target=job) for _ in range(2)]
    for thread in jobs:
        thread.start()
    for thread in jobs:
        thread.join(10)
    assert len(spans) == 4 and all(threads == 1 for _, _, threads in spans)
    first, second = sorted(spans)[:2], sorted(spans)[2:]
    assert max(end for _, end, _ in first) <= min(start for start, _, _ in second)
    assert torch.get_num_threads() == 2


def test_ctrl_c_while_waiting_for_replicas_stops_them_before_it_is_raised(two_threads, monkeypatch):
    from cellgap.featurestore.extract import replicas

    stop = threading.Event()
    real_join = replicas.Worker.join
    interrupted = []

    def join_interrupted_once(self, timeout=None):
        if not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt
        return real_join(self, timeout)

    monkeypatch.setattr(replicas.Worker, "join", join_interrupted_once)

    def loop() -> None:
        if threading.current_thread() is not threading.main_thread():
            stop.wait(10)  # a replica in the middle of its work until told to stop

    with pytest.raises(KeyboardInterrupt):
        run_replicas(2, loop, on_error=stop.set)
    assert stop.is_set()
    assert not [t for t in threading.enumerate() if t.name.startswith("cellgap-replica")]
    assert torch.get_num_threads() == 2


def test_a_shard_listed_twice_is_refused(tmp_path, encoder):
    dataset = open_dataset("synthetic:8")
    writer = _writer(tmp_path / "s.zarr", encoder, dataset)
    with pytest.raises(ValueError, match=r"more than once: \[1\]"):
        encode_shards(dataset, encoder, writer, [0, 1, 1], batch_size=2)
