"""Reading images and label maps from files, with errors that name the file and the problem."""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cellgap.featurestore.errors import DatasetError, DatasetNotFoundError, ImageTooLargeError

if TYPE_CHECKING:
    from PIL import Image

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_SUFFIXES: tuple[str, ...] = (".npy", ".tif", ".tiff", ".mat", ".png")


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """An RGB image as (H,W,3) uint8; grey is replicated, alpha dropped, 16-bit scaled down. With `max_pixels`,
    the size in the header is checked first, so a larger image is refused before it is decoded."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: image file not found")
    if max_pixels is not None:
        check_image_size(path, max_pixels)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with _quiet_bomb_warnings(), Image.open(path) as image:
                array = pil_pixels(image)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from None
    except Exception as error:  # noqa: BLE001 - PIL's DecompressionBombError and codec errors of damaged files
        raise DatasetError(f"{path}: cannot read image ({type(error).__name__}: {error})") from None
    return to_rgb_uint8(array, str(path))


def image_header_size(path: Path) -> tuple[int, int]:
    """(height, width) from an image file's header, without decoding its pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if not tif.pages:
                    raise DatasetError(f"{path}: the TIFF file has no pages")
                shape = tuple(int(s) for s in tif.pages[0].shape)
            if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
                return shape[1], shape[2]
            if len(shape) < 2:
                raise DatasetError(f"{path}: expected an image of shape (H,W) or (H,W,C), got {shape}")
            return shape[0], shape[1]
        from PIL import Image

        with _quiet_bomb_warnings(), Image.open(path) as image:
            return image.height, image.width
    except DatasetError:
        raise
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read image ({error})") from None
    except Exception as error:  # noqa: BLE001 - PIL's DecompressionBombError, damaged headers raise many kinds
        from PIL import Image

        if isinstance(error, Image.DecompressionBombError):
            raise ImageTooLargeError(f"{path}: more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, the most PIL "
                                     "opens (a decompression bomb?)") from None
        raise DatasetError(f"{path}: cannot read image header ({type(error).__name__}: {error})") from None


def check_image_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(height, width) from the header, or ImageTooLargeError when it holds more than `max_pixels` pixels."""
    height, width = image_header_size(path)
    if height * width > max_pixels:
        raise ImageTooLargeError(f"{path}: {height} x {width} pixels is more than the limit of {max_pixels} pixels "
                                 "(--max-pixels)")
    return height, width


def allow_pil_pixels(max_pixels: int) -> None:
    """Raise PIL's own decompression-bomb limit to at least `max_pixels`, so that the limit a user chose is the
    one applied (PIL refuses images over twice its limit when they are opened; it never lowers here)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


@contextmanager
def _quiet_bomb_warnings() -> Iterator[None]:
    """PIL warns on stderr about images over its limit; the callers check sizes themselves and say so in one line."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


_NPY_MAGIC = b"\x93NUMPY"


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a .npy file, read from its header and checked against the file's
    size, so that a header claiming more than the file holds is refused before anything is allocated."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as handle:
            if handle.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                raise DatasetError(f"{path}: not a .npy file (no NumPy header)")
            handle.seek(0)
            version = npy_format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(handle)
            else:
                raise DatasetError(f"{path}: .npy format version {version[0]}.{version[1]} is not supported")
            offset = handle.tell()
            size = os.fstat(handle.fileno()).st_size
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"{path}: damaged .npy header ({error})") from None
    if dtype.hasobject:
        raise DatasetError(f"{path}: the .npy file holds Python objects (pickled data), not numbers")
    needed = math.prod(shape) * dtype.itemsize
    if needed > size - offset:
        raise DatasetError(f"{path}: the .npy header claims shape {tuple(shape)} of {dtype} ({needed} bytes) but the "
                           f"file holds {size - offset} bytes of data")
    return tuple(shape), dtype, offset


def load_npy(path: Path, what: str = ".npy file", mmap: bool = False) -> np.ndarray:
    """A .npy file of numbers (never pickles), its header checked first (`npy_header`); `mmap` maps it read-only."""
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: {what} not found")
    npy_header(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot read {what} ({error})") from None


# PIL modes whose pixels are not colour values as stored (palettes, bilevel, other colour spaces)
_CONVERTED_MODES = {"P": "RGB", "PA": "RGBA", "1": "RGB", "CMYK": "RGB", "YCbCr": "RGB",
                    "LA": "RGBA", "LAB": "RGB", "HSV": "RGB"}


def pil_pixels(image: Image.Image) -> np.ndarray:
    """The pixels of an opened PIL image as colour values, for `to_rgb_uint8`: palette, bilevel and other
    colour-space images are converted; grey, 16-bit and RGB(A) are passed as stored. Files and uploads
    share it, so the command line and the service read the same PNG the same way."""
    target = _CONVERTED_MODES.get(image.mode)
    return np.asarray(image.convert(target) if target else image)


def to_rgb_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """Normalise a decoded image to (H,W,3) uint8 or say clearly why it cannot be."""
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # channel-first TIFF
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise DatasetError(f"{what}: expected an RGB image (H,W,3), got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        return np.ascontiguousarray((array // 257).astype(np.uint8))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DatasetError(f"{what}: image contains NaN or infinite values")
        high = float(array.max()) if array.size else 0.0
        scaled = array * 255.0 if high <= 1.0 else array
        if scaled.min() < 0 or scaled.max() > 255.0 + 1e-6:
            raise DatasetError(f"{what}: float image values must lie in 0..1 or 0..255")
        return np.ascontiguousarray(np.round(scaled).astype(np.uint8))
    raise DatasetError(f"{what}: unsupported image dtype {array.dtype}")


def read_label(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Instance map (H,W) int32 and optional class map (H,W) uint8 from .npy, .tif/.tiff, .png or .mat.

    .npy: (H,W) instances or (H,W,2) instances + classes. .mat (HoVer-Net): `inst_map` and optional
    `inst_type` (class per instance id, 1-based rows) or `type_map` (class per pixel).
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"{path}: label file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = load_npy(path, "label file")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
        elif suffix == ".mat":
            return _read_mat(path)
        else:
            raise DatasetError(f"{path}: unsupported label file type {suffix!r} (use {', '.join(LABEL_SUFFIXES)})")
    except (OSError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read label file ({error})") from None
    return split_label_array(array, str(path))


def split_label_array(array: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(H,W) -> instances only; (H,W,2) -> instances and classes; anything else is an error."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return as_instances(array, what), None
    if array.ndim == 3 and array.shape[-1] == 2:
        return as_instances(array[..., 0], what), as_classes(array[..., 1], what)
    raise DatasetError(f"{what}: expected a label map of shape (H,W) or (H,W,2), got {array.shape}")


def as_instances(array: np.ndarray, what: str) -> np.ndarray:
    """Check and convert an instance map to int32 (ids 0..2^31-1, 0 = background)."""
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetError(f"{what}: instance map must hold integer ids, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array != np.round(array)).any():
            raise DatasetError(f"{what}: instance map holds non-integer values")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        raise DatasetError(f"{what}: instance ids must lie in 0..2^31-1")
    return np.ascontiguousarray(array.astype(np.int32, copy=False))


def as_classes(array: np.ndarray, what: str) -> np.ndarray:
    """Check and convert a class map to uint8 (0 = background, 1..255 = class ids)."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DatasetError(f"{what}: class map must hold integer class ids, got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise DatasetError(f"{what}: class ids must lie in 0..255")
    if np.issubdtype(array.dtype, np.floating) and (array != np.round(array)).any():
        raise DatasetError(f"{what}: class map holds non-integer values")
    return np.ascontiguousarray(array.astype(np.uint8, copy=False))


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        content = loadmat(path)
    except (OSError, ValueError, NotImplementedError, MatReadError) as error:
        raise DatasetError(f"{path}: cannot read .mat file ({error})") from None
    if "inst_map" not in content:
        raise DatasetError(f"{path}: .mat file has no 'inst_map' field (HoVer-Net layout expected)")
    instances = as_instances(np.asarray(content["inst_map"]), f"{path} inst_map")
    if instances.ndim != 2:
        raise DatasetError(f"{path}: inst_map must be 2-D, got {instances.shape}")
    if "type_map" in content:
        classes = as_classes(np.asarray(content["type_map"]), f"{path} type_map")
        if classes.shape != instances.shape:
            raise DatasetError(f"{path}: type_map shape {classes.shape} differs from inst_map {instances.shape}")
        return instances, classes
    if "inst_type" in content:
        types = np.asarray(content["inst_type"]).reshape(-1)
        ids = np.unique(instances)
        ids = ids[ids > 0]
        if ids.size and ids.max() > types.size:
            raise DatasetError(f"{path}: inst_type has {types.size} entries but inst_map has id {ids.max()}")
        lookup = np.zeros(max(int(ids.max()) if ids.size else 0, types.size) + 1, np.int64)
        lookup[1 : types.size + 1] = types
        return instances, as_classes(lookup[instances], f"{path} inst_type")
    return instances, None
