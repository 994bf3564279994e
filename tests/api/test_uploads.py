"""Decoding uploads: every accepted format, and every refusal before the pixels are decoded."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellgap.api.errors import InvalidInputError, TooLargeError, UnsupportedMediaError
from cellgap.api.uploads import Limits, decode_image, decode_labels, probe_image, sniff
from tests.api.conftest import blob_tile, npy_bytes, png_bytes

LIMITS = Limits(max_pixels=512 * 512)


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "TIFF":
        tifffile.imwrite(buffer, image)
    else:
        Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (IHDR patched, CRC fixed)."""
    data = bytearray(png_bytes(np.zeros((2, 2, 3), np.uint8)))
    ihdr = data[12:29]  # type + 13 bytes of content
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG"])
def test_rgb_formats_decode(fmt):
    image = blob_tile(64)
    decoded = decode_image(_encode(image, fmt), LIMITS)
    assert decoded.shape == (64, 64, 3) and decoded.dtype == np.uint8
    if fmt != "JPEG":
        np.testing.assert_array_equal(decoded, image)


@pytest.mark.parametrize("array", [
    np.full((8, 9), 7, np.uint8),  # grey
    np.full((8, 9, 4), 7, np.uint8),  # RGBA
    np.full((3, 8, 9), 7, np.uint8),  # channel-first
    np.full((8, 9, 3), 7 * 257, np.uint16),
    np.full((8, 9, 3), 7 / 255, np.float32),
])
def test_npy_images_of_several_layouts(array):
    decoded = decode_image(npy_bytes(array), LIMITS)
    assert decoded.shape == (8, 9, 3) and int(decoded[0, 0, 0]) == 7


def test_grey_palette_and_16_bit_pngs():
    for image in (Image.new("L", (5, 4), 9), Image.new("P", (5, 4), 0), Image.new("I;16", (5, 4), 9 * 257)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        assert decode_image(buffer.getvalue(), LIMITS).shape == (4, 5, 3)


@pytest.mark.parametrize("data, error, code", [
    (b"", InvalidInputError, "empty"),
    (b"hello, not an image", UnsupportedMediaError, "not_an_image"),
    (b"GIF89a" + b"\0" * 20, UnsupportedMediaError, "not_an_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, InvalidInputError, "invalid_image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 30, InvalidInputError, "invalid_image"),
    (b"\x93NUMPY garbage", UnsupportedMediaError, "not_an_array"),
])
def test_damaged_or_foreign_bytes_are_named(data, error, code):
    with pytest.raises(error) as caught:
        decode_image(data, LIMITS, "upload 'file'")
    assert caught.value.code == code and "upload 'file'" in str(caught.value)


@pytest.mark.parametrize("array, code", [
    (np.zeros((8, 8, 2), np.uint8), "unsupported_channels"),
    (np.zeros((8, 8, 5), np.uint8), "unsupported_channels"),
    (np.zeros((2, 8, 8, 3), np.uint8), "unsupported_channels"),
    (np.zeros(8, np.uint8), "unsupported_channels"),
    (np.zeros((8, 8, 3), np.int64), "unsupported_dtype"),
    (np.zeros((8, 8, 3), np.complex64), "unsupported_dtype"),
    (np.zeros((8, 8, 3), bool), "unsupported_dtype"),
    (np.full((8, 8, 3), np.nan, np.float32), "nan_values"),
    (np.full((8, 8, 3), -3.0, np.float32), "invalid_image"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
])
def test_unusable_arrays_are_refused_with_a_code(array, code):
    with pytest.raises(InvalidInputError) as caught:
        decode_image(npy_bytes(array), LIMITS)
    assert caught.value.code == code


def test_structured_and_object_npy_are_refused():
    with pytest.raises(InvalidInputError, match="dtype"):
        decode_image(npy_bytes(np.zeros((4, 4), dtype=[("a", "u1"), ("b", "u1")])), LIMITS)
    buffer = io.BytesIO()
    np.save(buffer, np.array([[object()]]), allow_pickle=True)
    with pytest.raises(InvalidInputError, match="dtype"):
        decode_image(buffer.getvalue(), LIMITS)


@pytest.mark.parametrize("claimed", [(3000, 3000), (20000, 20000), (100_000, 100_000)])
def test_png_headers_claiming_huge_images_are_refused_before_decoding(claimed):
    with pytest.raises(TooLargeError) as caught:
        decode_image(_png_claiming(*claimed), LIMITS)
    assert caught.value.code == "image_too_large"


def test_real_decompression_bombs_are_refused():
    """Small files (~10 kB) that decompress to 9 Mpx: refused from the header."""
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")
    tiff = io.BytesIO()
    tifffile.imwrite(tiff, np.zeros((3000, 3000), np.uint8), compression="zlib")
    for data in (buffer.getvalue(), tiff.getvalue()):
        assert len(data) < 20_000
        with pytest.raises(TooLargeError):
            decode_image(data, LIMITS)


def test_npy_header_is_checked_before_reading():
    header = npy_bytes(np.zeros((2, 2, 3), np.uint8))
    fake = header.replace(b"(2, 2, 3)", b"(99999, 99999, 3)")
    with pytest.raises(TooLargeError):
        decode_image(fake, LIMITS)
    short = header.replace(b"(2, 2, 3)", b"(9, 9, 3)")
    with pytest.raises(InvalidInputError, match="shorter"):
        decode_image(short, LIMITS)


def test_small_sides_count_as_a_tile_of_work():
    thin = np.zeros((1, 600, 3), np.uint8)  # 600 px, but 64 x 600 of sliding-window work
    assert decode_image(npy_bytes(thin), Limits(max_pixels=64 * 600)).shape == (1, 600, 3)
    with pytest.raises(TooLargeError):
        decode_image(npy_bytes(thin), Limits(max_pixels=63 * 600, min_side=64))


def test_sniff_ignores_names_and_reads_magic_bytes():
    assert sniff(png_bytes(blob_tile(8))) == "png"
    assert sniff(npy_bytes(np.zeros(3))) == "npy"
    assert sniff(b"II*\x00rest") == "tiff"


def test_labels_from_npy():
    instances = np.array([[0, 1], [2, 2]], np.int64)
    ids, classes = decode_labels(npy_bytes(instances), LIMITS)
    assert ids.dtype == np.int32 and classes is None
    ids, classes = decode_labels(npy_bytes(np.stack([instances, instances], -1)), LIMITS)
    assert classes.dtype == np.uint8
    for bad, code in [(np.full((2, 2), np.nan), "nan_values"), (np.array([[-1, 0]]), "invalid_labels"),
                      (np.zeros((2, 2, 3), np.int32), "invalid_labels"), (np.zeros((2, 2), bool), "unsupported_dtype"),
                      (np.zeros(4, np.int32), "invalid_labels")]:
        with pytest.raises(InvalidInputError) as caught:
            decode_labels(npy_bytes(bad), LIMITS)
        assert caught.value.code == code, bad
    with pytest.raises(UnsupportedMediaError):
        decode_labels(png_bytes(blob_tile(8)), LIMITS)


@pytest.mark.parametrize("mode", ["P", "P+transparency", "1", "LA", "L", "I;16", "RGBA"])
def test_a_file_and_an_upload_of_the_same_image_give_the_same_pixels(tmp_path, mode):
    from cellgap.featurestore.datasets.imageio import read_image

    ramp = np.linspace(0, 255, 64).astype(np.uint8)
    rgb = Image.fromarray(np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], 128), axis=-1).astype(np.uint8))
    path = tmp_path / "tile.png"
    if mode == "I;16":
        rgb.convert("I").point(lambda v: v * 200).convert("I;16").save(path)
    elif mode.startswith("P"):
        palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        palette.save(path, **({"transparency": 0} if "transparency" in mode else {}))
    else:
        rgb.convert(mode).save(path)
    from_file = read_image(path)
    from_upload = decode_image(path.read_bytes(), LIMITS)
    assert from_file.shape == (64, 64, 3) and from_file.dtype == np.uint8
    np.testing.assert_array_equal(from_file, from_upload)
    if mode.startswith("P") or mode == "RGBA":  # colour kept: the pixels follow the original
        assert np.abs(from_file.astype(int) - np.asarray(rgb, int)).mean() < 12


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG", "npy"])
def test_the_size_of_an_upload_is_read_from_its_header_alone(fmt):
    image = np.zeros((40, 70, 3), np.uint8)
    data = npy_bytes(image) if fmt == "npy" else _encode(image, fmt)
    assert probe_image(data, LIMITS) == (40, 70)
    assert probe_image(npy_bytes(np.zeros((3, 40, 70), np.uint8)), LIMITS) == (40, 70)  # channel-first


@pytest.mark.parametrize("data, error, code", [
    (b"", InvalidInputError, "empty"),
    (b"%PDF-1.4", UnsupportedMediaError, "not_an_image"),
    (_png_claiming(100_000, 100_000), TooLargeError, "image_too_large"),
    (npy_bytes(np.zeros((8, 8, 5), np.uint8)), InvalidInputError, "unsupported_channels"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), InvalidInputError, "invalid_image"),
])
def test_the_header_check_refuses_what_decoding_would(data, error, code):
    with pytest.raises(error) as caught:
        probe_image(data, LIMITS)
    assert caught.value.code == code
