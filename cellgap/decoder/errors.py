"""Errors of the decoder package; all derive from `CellgapError`, so the CLI reports them as one line."""
from __future__ import annotations

from cellgap.core.errors import CellgapError


class DecoderError(CellgapError):
    """Root of the decoder's errors."""


class CheckpointError(DecoderError, ValueError):
    """A run directory or checkpoint is missing, damaged, or not a cellgap checkpoint."""


class TrainingError(DecoderError, ValueError):
    """A training run cannot start or continue (bad settings, an existing run dir without --resume)."""


class PredictionError(DecoderError, ValueError):
    """Input to prediction cannot be used (not an image, wrong channels, empty)."""
