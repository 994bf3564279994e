"""Errors of the feature store; `CellgapError` is the root every package's user errors derive from.

Each error also derives from the builtin a caller would naturally catch (FileNotFoundError,
ValueError, ...), so code outside cellgap can handle them without importing this module.
"""
from __future__ import annotations


class CellgapError(Exception):
    """A problem with the user's input or environment: reported as one line, never a traceback."""


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
