"""The installed cellgap version, recorded in every store and run for provenance."""
from __future__ import annotations

from importlib import metadata


def cellgap_version() -> str:
    """The installed distribution's version, or `0+unknown` when running from an uninstalled tree."""
    try:
        return metadata.version("cellgap")
    except metadata.PackageNotFoundError:
        return "0+unknown"
