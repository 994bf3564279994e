"""Errors of the metrics: ground truth and prediction that cannot be compared."""
from __future__ import annotations

from cellgap.core.errors import CellgapError


class MetricsError(CellgapError):
    """Root of the metrics' errors."""


class EvaluationError(MetricsError, ValueError):
    """Ground truth and prediction cannot be compared (mismatched counts or shapes, bad ids or classes)."""
