"""`cellgap bench extract` measures what it says on a tiny run (its numbers are for the README, not asserted)."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from cellgap.featurestore.bench import evict_from_page_cache, run_extract_bench


def test_extract_bench_row_describes_the_store_it_wrote(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rows = run_extract_bench(["convnext_atto"], n_tiles=6, batch_size=3, device="cpu", rounds=2,
                             codecs=(("float16", "none"), ("int8", "none")), json_path=out)
    assert [(r.dtype, r.tiles) for r in rows] == [("float16", 6), ("int8", 6)]
    f16, int8 = rows
    # convnext_atto at 256 px: 40x64x64 + 80x32x32 + 160x16x16 + 320x8x8 values per tile
    assert f16.raw_float32_bytes_per_tile == (40 * 64 * 64 + 80 * 32 * 32 + 160 * 16 * 16 + 320 * 8 * 8) * 4
    assert 0.5 <= f16.feature_bytes_per_tile / f16.raw_float32_bytes_per_tile < 0.55  # float16 plus shard indices
    assert 0.25 <= int8.feature_bytes_per_tile / int8.raw_float32_bytes_per_tile < 0.3  # codes plus scales
    for row in rows:
        assert row.encoder_tiles_per_s > 0 and row.extract_tiles_per_s > 0 and row.read_tiles_per_s > 0
        assert row.extract_over_encoder > 0 and row.read_over_memmap > 0
        assert row.cold_read_tiles_per_s > 0 and row.cold_read_over_memmap > 0
        assert row.replicas == torch.get_num_threads()
        assert row.intra_op_encoder_tiles_per_s > 0 and row.extract_over_intra_op > 0
    assert [r["dtype"] for r in json.loads(out.read_text())] == ["float16", "int8"]
    assert "extr/enc" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("fincore") is None, reason="util-linux fincore is not installed")
def test_evicted_files_leave_the_page_cache(tmp_path):
    path = tmp_path / "features.bin"
    np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8).tofile(path)
    path.read_bytes()  # now cached

    def resident_pages() -> int:
        out = subprocess.run(["fincore", "--noheadings", "--raw", "--output", "PAGES", str(path)], capture_output=True,
                             text=True, check=True).stdout
        return int(out.split()[0])

    assert resident_pages() > 0
    evict_from_page_cache([path])
    assert resident_pages() == 0
