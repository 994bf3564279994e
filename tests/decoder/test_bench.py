"""`cellgap bench train` reads the store as `train` does and gives every path the same number of timed runs."""
from __future__ import annotations

import json

from cellgap.decoder import bench
from cellgap.decoder.training import loop


def test_bench_train_reads_the_store_like_training_and_times_each_path_alike(tmp_path, monkeypatch):
    made = []

    def spy(store, layer_names, indices, targets, config, device):
        batches = loop.training_batches(store, layer_names, indices, targets, config, device)
        made.append(batches)
        return batches

    monkeypatch.setattr(bench, "training_batches", spy)
    out = tmp_path / "bench.json"
    rows = bench.run_train_bench(["convnext_atto"], n_tiles=8, batch_size=4, epochs=1, device="cpu", json_path=out,
                                 rounds=3)
    (batches,) = made
    assert batches.shuffle and batches.augment == "d4" and batches.threads == 2  # train's defaults
    first, second = ([int(i) for b in batches.epoch(e) for i in b.indices] for e in (1, 2))
    assert sorted(first) == sorted(second) and first != second  # reshuffled every epoch, as in training
    (row,) = rows
    assert row.rounds == 3 and json.loads(out.read_text())[0]["rounds"] == 3
    assert min(row.store_s_per_epoch, row.on_the_fly_s_per_epoch, row.in_memory_s_per_epoch) > 0
    assert row.store_over_in_memory == row.store_s_per_epoch / row.in_memory_s_per_epoch
