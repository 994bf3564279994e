"""Errors of the feature store, each also the builtin a caller would catch (FileNotFoundError, ValueError)."""
from __future__ import annotations

from cellgap.core.errors import CellgapError


class FeatureStoreError(CellgapError):
    """Root of the feature store's errors."""


class DatasetError(FeatureStoreError, ValueError):
    """A data set is missing, malformed, or inconsistent (names the file and what is wrong)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data set path or one of its required files does not exist."""


class EncoderError(FeatureStoreError, ValueError):
    """An encoder name, its layers or its weights cannot be used."""


class StoreError(FeatureStoreError, ValueError):
    """A store cannot be opened, written, or is not what the caller expects."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given path."""


class ManifestMismatchError(StoreError):
    """A store was written with another encoder, layer set, schema or data set than asked for."""


class ImageTooLargeError(DatasetError):
    """An image file holds more pixels than the limit (checked from its header, before decoding)."""
