"""Errors of the decoder package; all derive from `CellgapError`, so the CLI reports them as one line."""
from __future__ import annotations

from featurestore.errors import CellgapError


class DecoderError(CellgapError):
    """Root of the decoder's errors."""


class EvaluationError(DecoderError, ValueError):
    """Ground truth and prediction cannot be compared (mismatched counts or shapes, bad ids or classes)."""
