"""The magnification a store records: the data set's own, the user's `--magnification`, or an assumption said aloud.

Targets, the post-processing size filter and the F1_d pairing radius all depend on it; a silent 40x
for a 20x folder draws boundaries twice too thick and removes half the nuclei as too small.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

from cellgap.featurestore.datasets.base import DatasetInfo
from cellgap.featurestore.errors import DatasetError
from cellgap.featurestore.store.manifest import ASSUMED_MAGNIFICATION

log = logging.getLogger(__name__)

MagnificationSource = Literal["dataset", "flag", "assumed"]


def settle_magnification(info: DatasetInfo, spec: str,
                         magnification: int | None) -> tuple[DatasetInfo, MagnificationSource]:
    """The data set's info with its magnification filled in, and where the value came from."""
    if info.magnification is not None:
        if magnification is not None and magnification != info.magnification:
            raise DatasetError(f"{spec}: the data set is {info.magnification}x, --magnification {magnification} "
                               f"contradicts it")
        return info, "dataset"
    if magnification is not None:
        return replace(info, magnification=magnification), "flag"
    return replace(info, magnification=ASSUMED_MAGNIFICATION), "assumed"


def warn_if_assumed(spec: str, source: str) -> None:
    """Said once, after the extraction succeeded, so that an error stays the only line on failure."""
    if source == "assumed":
        log.warning("%s: magnification unknown, assumed %dx for targets, post-processing and F1_d and recorded "
                    "as assumed (give --magnification 20|40 to say it)", spec, ASSUMED_MAGNIFICATION)
