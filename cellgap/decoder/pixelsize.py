"""The pixel size a run's model was trained at, which slides and slide regions are read at for it."""
from __future__ import annotations

import logging

from cellgap.featurestore.slides.resolution import MPP_AT_MAGNIFICATION
from cellgap.featurestore.store.manifest import Manifest

log = logging.getLogger(__name__)


def run_mpp(manifest: Manifest) -> float:
    """The pixel size the run's model was trained at: recorded, else the usual one of its magnification."""
    dataset = manifest.dataset
    if dataset.mpp is not None:
        return float(dataset.mpp)
    magnification = dataset.magnification or 40
    if dataset.magnification_source == "assumed" or dataset.magnification is None:
        log.warning("the run's store does not know its magnification; %dx (%.2f mpp) is assumed for reading slides "
                    "(extract with --magnification or --mpp to say it)", magnification,
                    MPP_AT_MAGNIFICATION.get(magnification, 0.25))
    return MPP_AT_MAGNIFICATION.get(magnification, 0.25)
