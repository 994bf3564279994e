"""Inputs that once ended in a traceback or a huge allocation: each is one line on stderr and exit code 2.

Image bombs are PNG headers that claim a huge size over a few bytes of data, so nothing large is ever
written; their size must be refused from the header, before anything is decoded.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from cellgap.cli import main

CELLGAP = str(Path(sys.executable).with_name("cellgap"))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid PNG header for a width x height RGB image, followed by far too little pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def captured_error(capsys, argv: list[str]) -> str:
    """Run the command in-process; it must exit 2 with exactly one line on stderr, which is returned."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_image_bombs_are_refused_from_the_header_in_one_line(tmp_path, trained_run):
    """20000 x 20000 raised PIL's DecompressionBombError; 12000 x 12000 had no limit at all (2.6 GB and growing)."""
    bomb = png_claiming(tmp_path / "bomb" / "a.png", 20000, 20000)
    line = one_line_error(subprocess.run([CELLGAP, "predict", "--run", str(trained_run), "--images", str(bomb.parent),
                                          "--out", str(tmp_path / "o1")], capture_output=True, text=True, timeout=300),
                          str(bomb), "pixels")
    assert "DecompressionBomb" not in line
    big = png_claiming(tmp_path / "big" / "a.png", 12000, 12000)
    one_line_error(subprocess.run([CELLGAP, "predict", "--run", str(trained_run), "--images", str(big.parent),
                                   "--out", str(tmp_path / "o2")], capture_output=True, text=True, timeout=300),
                   str(big), "12000 x 12000", "--max-pixels")
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_max_pixels_is_the_services_default_and_can_be_lowered(tmp_path, trained_run, capsys):
    from cellgap.api.settings import Settings
    from cellgap.cli import build_parser
    from cellgap.core.limits import MAX_IMAGE_PIXELS

    args = build_parser().parse_args(["predict", "--run", "r", "--images", "i", "--out", "o"])
    assert args.max_pixels == MAX_IMAGE_PIXELS == Settings.model_fields["max_image_pixels"].default
    small = png_claiming(tmp_path / "images" / "tile.png", 300, 200)  # never decoded: refused from its header
    line = captured_error(capsys, ["predict", "--run", str(trained_run), "--images", str(small.parent),
                                   "--out", str(tmp_path / "o"), "--max-pixels", "50000", "--no-progress"])
    assert "200 x 300 pixels is more than the limit of 50000" in line


def test_bad_training_numbers_are_one_line(tmp_path, conv_store, capsys):
    base = ["train", "--store", str(conv_store), "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]
    assert "'seed'" in captured_error(capsys, [*base, "--seed", "-1"])
    assert "'seed'" in captured_error(capsys, [*base, "--seed", "99999999999999999999999"])
    assert "'lr'" in captured_error(capsys, [*base, "--lr", "1e300"])
    assert "'weight_decay'" in captured_error(capsys, [*base, "--weight-decay", "1e300"])
    assert not (tmp_path / "run").exists()


def test_config_files_that_are_not_yaml_or_not_utf8_are_one_line(tmp_path, conv_store, capsys):
    base = ["train", "--store", str(conv_store), "--out", str(tmp_path / "run")]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"epochs: 2\n# caf\xe9\n")
    assert "not UTF-8" in captured_error(capsys, [*base, "--config", str(latin)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: 2\nlr: [1,\n  batch: 3\n")  # PyYAML's message is 7 lines with excerpts
    line = captured_error(capsys, [*base, "--config", str(broken)])
    assert "not valid YAML" in line and "line 4, column 1" in line
    assert "not UTF-8" in captured_error(capsys, ["compare", "--config", str(latin), "--out", str(tmp_path / "c")])


def test_a_failing_image_leaves_the_output_folder_as_it_was(tmp_path, trained_run):
    from skimage import io

    from cellgap.decoder.errors import PredictionError
    from cellgap.decoder.predict import predict_images
    from cellgap.featurestore.errors import DatasetError

    images = tmp_path / "images"
    images.mkdir()
    io.imsave(images / "a_good.png", np.full((64, 64, 3), 180, np.uint8), check_contrast=False)
    png_claiming(images / "b_damaged.png", 64, 64)  # a sound header over damaged pixel data: found only on decoding
    out = tmp_path / "pred"
    out.mkdir()
    (out / "old.txt").write_text("an earlier prediction")
    with pytest.raises(PredictionError, match="not empty.*--overwrite"):
        predict_images(trained_run, images, out, progress=False)
    with pytest.raises(DatasetError, match="b_damaged.png"):
        predict_images(trained_run, images, out, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"]  # no half of the new outputs beside the old ones
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the temporary folder is gone
    (images / "b_damaged.png").unlink()
    summary = predict_images(trained_run, images, out, progress=False, overwrite=True)
    assert summary.images == 1 and (out / "labels" / "a_good.npy").exists() and not (out / "old.txt").exists()


def test_an_unexpected_error_at_the_command_boundary_is_one_line(monkeypatch, capsys):
    import cellgap.featurestore.cli as featurestore_cli

    def explode(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127]\nDefaultCPUAllocator: can't allocate memory")

    def exhaust(args):
        raise MemoryError("Unable to allocate 37.3 GiB")

    monkeypatch.setattr(featurestore_cli, "_encoders", explode)
    assert "RuntimeError: [enforce fail" in captured_error(capsys, ["encoders"])
    monkeypatch.setattr(featurestore_cli, "_encoders", exhaust)
    assert "out of memory (Unable to allocate 37.3 GiB)" in captured_error(capsys, ["encoders"])
