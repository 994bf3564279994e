"""Opening a store by path or URL: local folders by default, any fsspec URL (s3://, gs://, ...) otherwise."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import zarr

from cellgap.featurestore.errors import StoreError, StoreNotFoundError


def open_group(location: str, mode: Literal["r", "r+", "w"]) -> zarr.Group:
    """The store's root group. Local paths use zarr's LocalStore; URLs go through fsspec."""
    store: zarr.storage.FsspecStore | zarr.storage.LocalStore
    try:
        if "://" in location and not location.startswith("file://"):
            store = zarr.storage.FsspecStore.from_url(location, read_only=(mode == "r"))
        else:
            path = Path(location.removeprefix("file://"))
            if mode != "w" and not (path / "zarr.json").exists():
                raise StoreNotFoundError(f"{location}: no store here")
            store = zarr.storage.LocalStore(path, read_only=(mode == "r"))
        return zarr.open_group(store, mode=mode if mode != "r+" else "r+", zarr_format=3)
    except (StoreError, FileNotFoundError):
        raise
    except (ValueError, OSError, TypeError) as error:
        raise StoreError(f"{location}: cannot open store ({error})") from None
