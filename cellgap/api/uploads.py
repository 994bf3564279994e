"""Decoding uploads (bytes, never paths) into arrays, with every limit checked before the pixels are decoded.

The format comes from the file's first bytes, not its name: PNG, JPEG, TIFF and .npy. Image size
comes from the header (PIL's lazy open, tifffile's page shape, the .npy header) and is checked
against the pixel limit before any decompression, so a small file that claims a huge image (a
decompression bomb) is refused cheaply.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from cellgap.api.errors import InvalidInputError, TooLargeError, UnsupportedMediaError
from cellgap.featurestore.datasets.imageio import pil_pixels, split_label_array, to_rgb_uint8
from cellgap.featurestore.errors import DatasetError

ACCEPTED = "PNG, JPEG, TIFF or .npy"
_NPY_MAGIC = b"\x93NUMPY"
_IMAGE_DTYPES = ("uint8", "uint16", "float16", "float32", "float64")


@dataclass(frozen=True)
class Limits:
    """Largest image accepted, as height x width; `min_side` pads small sides when counting work."""

    max_pixels: int
    min_side: int = 1


def sniff(data: bytes) -> str:
    """'png' | 'jpeg' | 'tiff' | 'npy' | 'unknown' from the magic bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(_NPY_MAGIC):
        return "npy"
    return "unknown"


def check_size(height: int, width: int, limits: Limits, what: str) -> None:
    """Refuse an image of this size before its pixels exist (413 above the limit, sides below a tile counting as a
    tile, as the model pads them)."""
    if height < 1 or width < 1:
        raise InvalidInputError(f"{what}: the image is empty ({height} x {width} pixels)", code="empty")
    work = max(height, limits.min_side) * max(width, limits.min_side)
    if work > limits.max_pixels:
        raise TooLargeError(f"{what}: {height} x {width} pixels is more than the limit of {limits.max_pixels} pixels"
                            + (f" (sides below {limits.min_side} count as {limits.min_side})" if limits.min_side > 1 else ""),
                            code="image_too_large")


def _check_channels(shape: tuple[int, ...], what: str) -> None:
    """(H,W), (H,W,C) with C in 1,3,4, or channel-first (C,H,W) with C in 3,4."""
    if len(shape) == 2:
        return
    if len(shape) == 3 and (shape[-1] in (1, 3, 4) or (shape[0] in (3, 4) and shape[-1] not in (3, 4))):
        return
    channels = shape[-1] if len(shape) == 3 else None
    message = (f"{what}: {channels} channels; expected grey, RGB or RGBA" if channels is not None
               else f"{what}: expected an image of shape (H,W) or (H,W,C), got {tuple(shape)}")
    raise InvalidInputError(message, code="unsupported_channels")


def _image_hw(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (1, 3, 4):
        return shape[1], shape[2]
    return shape[0], shape[1]


def probe_image(data: bytes, limits: Limits, what: str = "upload") -> tuple[int, int]:
    """(height, width) of an image from its header alone, with the checks `decode_image` makes before
    decoding (format, channels, size): what a caller needs to admit or refuse it before paying for its pixels."""
    if not data:
        raise InvalidInputError(f"{what}: the file is empty", code="empty")
    kind = sniff(data)
    if kind == "unknown":
        raise UnsupportedMediaError(f"{what}: not a {ACCEPTED} file")
    if kind == "npy":
        shape, dtype = _npy_header(data, what)
        if not shape or any(s == 0 for s in shape):
            raise InvalidInputError(f"{what}: the array is empty (shape {shape})", code="empty")
        _check_channels(shape, what)
        height, width = _image_hw(shape)
    elif kind == "tiff":
        height, width = _tiff_hw(data, what)
    else:
        height, width = _pil_hw(data, what)
    check_size(height, width, limits, what)
    return height, width


def _tiff_hw(data: bytes, what: str) -> tuple[int, int]:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.pages:
                raise InvalidInputError(f"{what}: the TIFF file has no pages", code="empty")
            shape = tuple(int(s) for s in tif.pages[0].shape)
    except InvalidInputError:
        raise
    except Exception as error:  # noqa: BLE001 - tifffile raises many kinds on damaged files
        raise InvalidInputError(f"{what}: cannot read the TIFF file ({type(error).__name__}: {error})",
                                code="invalid_image") from None
    _check_channels(shape, what)
    return _image_hw(shape)


def _pil_open(data: bytes, what: str):  # -> PIL.Image.Image (PIL imported lazily)
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.DecompressionBombError as error:
        raise TooLargeError(f"{what}: {error}", code="image_too_large") from None
    except UnidentifiedImageError:
        raise InvalidInputError(f"{what}: the {sniff(data).upper()} header is damaged", code="invalid_image") from None
    except Exception as error:  # noqa: BLE001 - a damaged header raises many kinds
        raise InvalidInputError(f"{what}: cannot read the image header ({type(error).__name__}: {error})",
                                code="invalid_image") from None


def _pil_hw(data: bytes, what: str) -> tuple[int, int]:
    with _pil_open(data, what) as image:
        return int(image.height), int(image.width)


def decode_image(data: bytes, limits: Limits, what: str = "upload") -> np.ndarray:
    """(H,W,3) uint8 RGB from PNG/JPEG/TIFF/.npy bytes, or an ApiError that names the problem."""
    if not data:
        raise InvalidInputError(f"{what}: the file is empty", code="empty")
    kind = sniff(data)
    if kind == "unknown":
        raise UnsupportedMediaError(f"{what}: not a {ACCEPTED} file")
    if kind == "npy":
        array = _read_npy(data, limits, what, image=True)
    elif kind == "tiff":
        array = _read_tiff(data, limits, what)
    else:
        array = _read_pil(data, limits, what)
    return _to_rgb(array, what)


def _to_rgb(array: np.ndarray, what: str) -> np.ndarray:
    _check_channels(array.shape, what)
    if array.dtype.name not in _IMAGE_DTYPES:
        raise InvalidInputError(f"{what}: unsupported pixel type {array.dtype} (use {', '.join(_IMAGE_DTYPES)})",
                                code="unsupported_dtype")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(f"{what}: the image contains NaN or infinite values", code="nan_values")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    try:
        return to_rgb_uint8(array, what)
    except DatasetError as error:
        raise InvalidInputError(str(error), code="invalid_image") from None


def _read_pil(data: bytes, limits: Limits, what: str) -> np.ndarray:
    image = _pil_open(data, what)
    with image:
        check_size(image.height, image.width, limits, what)  # header only: nothing decoded yet
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        try:
            array = pil_pixels(image)
        except Exception as error:  # noqa: BLE001 - damaged files raise many kinds inside the codecs
            raise InvalidInputError(f"{what}: the image data is damaged ({type(error).__name__}: {error})",
                                    code="invalid_image") from None
    return array


def _read_tiff(data: bytes, limits: Limits, what: str) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if not tif.pages:
                raise InvalidInputError(f"{what}: the TIFF file has no pages", code="empty")
            page = tif.pages[0]
            shape = tuple(int(s) for s in page.shape)
            _check_channels(shape, what)
            check_size(*_image_hw(shape), limits, what)
            return page.asarray()
    except (InvalidInputError, TooLargeError):
        raise
    except Exception as error:  # noqa: BLE001 - tifffile raises many kinds on damaged files
        raise InvalidInputError(f"{what}: cannot read the TIFF file ({type(error).__name__}: {error})",
                                code="invalid_image") from None


def _npy_header(data: bytes, what: str) -> tuple[tuple[int, ...], np.dtype]:
    from numpy.lib import format as npy

    stream = io.BytesIO(data)
    try:
        version = npy.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as error:  # noqa: BLE001 - read_magic/header raise ValueError, SyntaxError, ...
        raise UnsupportedMediaError(f"{what}: not a valid .npy file ({error})", code="not_an_array") from None
    return tuple(int(s) for s in shape), dtype


def _read_npy(data: bytes, limits: Limits, what: str, *, image: bool) -> np.ndarray:
    shape, dtype = _npy_header(data, what)
    if dtype.hasobject or dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidInputError(f"{what}: unsupported array dtype {dtype}", code="unsupported_dtype")
    if any(s == 0 for s in shape) or not shape:
        raise InvalidInputError(f"{what}: the array is empty (shape {shape})", code="empty")
    if image:
        _check_channels(shape, what)
        check_size(*_image_hw(shape), limits, what)
    else:
        if len(shape) not in (2, 3):
            raise InvalidInputError(f"{what}: expected a label map (H,W) or (H,W,2), got shape {shape}",
                                    code="invalid_labels")
        check_size(shape[0], shape[1], limits, what)
    expected = int(np.prod(shape)) * dtype.itemsize
    if expected > len(data):
        raise InvalidInputError(f"{what}: the .npy header promises {expected} bytes but the file is shorter",
                                code="invalid_array")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - a damaged file raises many kinds
        raise InvalidInputError(f"{what}: cannot read the .npy array ({error})", code="invalid_array") from None


def decode_labels(data: bytes, limits: Limits, what: str = "upload") -> tuple[np.ndarray, np.ndarray | None]:
    """Instance map (H,W) int32 and optional class map (H,W) uint8 from a .npy in the folder layout."""
    if not data:
        raise InvalidInputError(f"{what}: the file is empty", code="empty")
    if sniff(data) != "npy":
        raise UnsupportedMediaError(f"{what}: expected a .npy label map ((H,W) or (H,W,2) integers)",
                                    code="not_an_array")
    return labels_from_array(_read_npy(data, limits, what, image=False), what)


def labels_from_array(array: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Check and split an (H,W) or (H,W,2) label array (also used for JSON arrays)."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInputError(f"{what}: the label map contains NaN or infinite values", code="nan_values")
    if array.dtype.kind == "b":
        raise InvalidInputError(f"{what}: label maps hold integer ids, not booleans", code="unsupported_dtype")
    try:
        return split_label_array(array, what)
    except DatasetError as error:
        raise InvalidInputError(str(error), code="invalid_labels") from None
