"""The typed result of an evaluation; `to_json_dict()` is the documented JSON (strict: null, never NaN)."""
from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _finite_or_none(value: Any) -> Any:
    """NaN/inf (a metric the reference leaves undefined) becomes None, i.e. JSON null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


Score = Annotated[float | None, BeforeValidator(_finite_or_none)]
ClassScores = dict[str, Score]  # keyed by the class id as a string


class _Strict(BaseModel):
    """Immutable, and no keys beyond the documented ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InstanceMetrics(_Strict):
    """HoVer-Net instance scores, each the mean over the images where it is defined."""

    pq: Score
    dq: Score
    sq: Score
    aji: Score
    aji_plus: Score
    dice1: Score
    dice2: Score
    n_used: dict[str, int]


class DetectionMetrics(_Strict):
    """HoVer-Net centroid detection/classification, pooled over all images."""

    radius: float
    f1_d: Score
    precision_d: Score
    recall_d: Score
    acc_type: Score
    f_c: ClassScores


class ConicMetrics(_Strict):
    """CoNIC's mPQ+ (pooled counts) and multi-class R^2 of per-image counts."""

    mpq_plus: Score
    pq_plus: ClassScores
    r2: Score
    r2_per_class: ClassScores


class TissueMetrics(_Strict):
    """PanNuke mPQ and bPQ over one tissue's images."""

    mpq: Score
    bpq: Score


class PanNukeMetrics(_Strict):
    """PanNuke's mPQ/bPQ (mean over tissues), class PQs (mean over images) and per-tissue values."""

    mpq: Score
    bpq: Score
    pq_per_class: ClassScores
    tissue: dict[str, TissueMetrics]


class ImageMetrics(_Strict):
    """One image's values (the `--per-image` CSV row); NaN-free like the rest."""

    name: str
    tissue: str
    n_gt: int
    n_pred: int
    pq: Score
    dq: Score
    sq: Score
    aji: Score
    aji_plus: Score
    dice1: Score
    dice2: Score
    mpq: Score  # PanNuke image mPQ
    bpq: Score  # PanNuke image bPQ
    tp_d: int
    fp_d: int
    fn_d: int


class MetricsReport(_Strict):
    """Everything `cellgap evaluate` reports; `per_image` is kept out of the JSON."""

    n_images: int
    class_names: dict[str, str]
    instance: InstanceMetrics
    detection: DetectionMetrics
    conic: ConicMetrics
    pannuke: PanNukeMetrics
    per_image: list[ImageMetrics] = Field(default_factory=list, exclude=True)

    def to_json_dict(self) -> dict[str, Any]:
        """The documented JSON object (plain dicts, floats and None only)."""
        return self.model_dump(mode="json")
