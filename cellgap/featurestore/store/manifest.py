"""The store's manifest: what wrote it, from what, and how; checked by every reader and writer."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cellgap.core.version import cellgap_version
from cellgap.featurestore.datasets.base import DatasetInfo, TileMeta
from cellgap.featurestore.encoders.description import EncoderDescription
from cellgap.featurestore.encoders.precision import UNKNOWN
from cellgap.featurestore.errors import ManifestMismatchError, StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PIXEL_HASH = "xxh3_128"  # what new stores hash each tile's pixels with (see layout.PIXEL_HASH_BYTES)
ATTRIBUTE = "cellgap"


ASSUMED_MAGNIFICATION = 40  # taken, and said, when a data set does not know its magnification


class DatasetRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: str
    path: str
    class_names: tuple[str, ...]
    magnification: int | None
    magnification_source: Literal["dataset", "flag", "assumed"] = "dataset"  # "assumed": nobody said; 40x taken
    mpp: float | None = None  # microns per pixel where known
    has_labels: bool
    tile_size: int
    split_policy: str
    n_tiles: int
    names_sha256: str  # over the ordered tile names and sources: same tiles in the same order


class StorageRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    dtype: Literal["float16", "float32", "int8"]
    codec: str
    shard_tiles: int
    views: tuple[str, ...] = ("identity",)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    schema_version: int
    cellgap_version: str
    created: str
    encoder: EncoderDescription
    dataset: DatasetRecord
    storage: StorageRecord
    pixels_sha256: str | None = None  # sha256 over all tiles' pixel hashes, set when the store is complete
    pixel_hash: Literal["sha256", "xxh3_128"] = "sha256"  # per-tile hash; manifests without it predate xxh3

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.encoder.layers]


def names_fingerprint(metas: Sequence[TileMeta]) -> str:
    digest = hashlib.sha256()
    for meta in metas:
        digest.update(f"{meta.name}\x00{meta.source}\x00{meta.origin}\n".encode())
    return digest.hexdigest()


def new_manifest(encoder: EncoderDescription, info: DatasetInfo, metas: Sequence[TileMeta],
                 storage: StorageRecord, magnification_source: str = "dataset", mpp: float | None = None) -> Manifest:
    dataset = DatasetRecord(
        format=info.format, path=info.path, class_names=info.class_names, magnification=info.magnification,
        magnification_source=magnification_source, mpp=mpp,
        has_labels=info.has_labels, tile_size=info.tile_size, split_policy=info.split_policy, n_tiles=len(metas),
        names_sha256=names_fingerprint(metas),
    )
    return Manifest(schema_version=SCHEMA_VERSION, cellgap_version=cellgap_version(),
                    created=datetime.now(UTC).isoformat(timespec="seconds"), encoder=encoder,
                    dataset=dataset, storage=storage, pixel_hash=PIXEL_HASH)


def parse_manifest(attributes: dict[str, Any], where: str) -> Manifest:
    """The manifest in a group's attributes; an unknown schema or a malformed one is a clear error."""
    raw = attributes.get(ATTRIBUTE)
    if not isinstance(raw, dict):
        raise StoreError(f"{where}: not a cellgap store (no manifest in the group attributes)")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(f"{where}: store schema version {version!r} is not supported by this cellgap "
                         f"(supports {SCHEMA_VERSION}); re-extract it or use a matching cellgap version")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        raise StoreError(f"{where}: malformed manifest at {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def differences(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of fields that differ between two nested dicts (for mismatch messages)."""
    keys = sorted(set(stored) | set(wanted))
    found = []
    for key in keys:
        a, b = stored.get(key), wanted.get(key)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            found += differences(a, b, path + ".")
        elif a != b:
            found.append(path)
    return found


def encoder_differences(stored: EncoderDescription, wanted: EncoderDescription) -> list[str]:
    """Identity fields in which two encoders differ, an `unknown` precision (a manifest older than the
    field) matching any: reading such features is not mixing them (`check_precision` refuses writing)."""
    found = differences(stored.identity(), wanted.identity())
    if UNKNOWN in (stored.precision, wanted.precision):
        found = [path for path in found if path != "precision"]
    return found


def check_precision(stored: EncoderDescription, wanted: EncoderDescription, where: str, *, writing: bool,
                    wanting: str, hint: str) -> None:
    """Refuse features of another compute precision; `writing` (a resume) refuses an unknown one too,
    since its shards could be bf16 or fp32 and the new ones would be the other."""
    if stored.precision == wanted.precision:
        return
    if UNKNOWN in (stored.precision, wanted.precision):
        if writing:
            raise ManifestMismatchError(
                f"{where} was written before cellgap recorded the encoder's precision (bf16 if extracted on a GPU, "
                f"fp32 on a CPU); adding {wanted.precision} shards could mix the two. Finish it with the cellgap that "
                "started it, or use another --store path")
        log.warning("%s: encoder precision %s, the other side %s (a manifest older than the field); "
                    "taken as compatible", where, stored.precision, wanted.precision)
        return
    raise ManifestMismatchError(
        f"{where} holds features computed in {stored.precision}; {wanting} {wanted.precision}; {hint}")


def check_compatible(stored: Manifest, wanted: Manifest, where: str, *, writing: bool = True) -> None:
    """Refuse to continue a store that another encoder, precision, layer set, data set or storage choice wrote.

    `writing=False` is for a store that is only read (a complete store reused, a run's training store)."""
    encoder = [d for d in encoder_differences(stored.encoder, wanted.encoder) if d != "precision"]
    if encoder:
        raise ManifestMismatchError(
            f"{where} was written by encoder {stored.encoder.name!r} ({stored.encoder.weights_source}); this run asks "
            f"for {wanted.encoder.name!r} ({wanted.encoder.weights_source}); they differ in {', '.join(encoder[:4])}. "
            "Use another --store path")
    check_precision(stored.encoder, wanted.encoder, where, writing=writing, wanting="this run computes",
                    hint=f"pass --precision {stored.encoder.precision} to use it, or another --store path")
    before = stored.dataset.model_dump(exclude={"path"})
    if before["magnification"] is None and wanted.dataset.magnification_source == "assumed":
        before.update(magnification=wanted.dataset.magnification, magnification_source="assumed")  # older stores
    dataset = differences(before, wanted.dataset.model_dump(exclude={"path"}))
    if dataset:
        raise ManifestMismatchError(f"{where} holds another data set (differs in {', '.join(dataset[:4])}); "
                                    "use another --store path")
    storage = differences(stored.storage.model_dump(), wanted.storage.model_dump())
    if storage:
        raise ManifestMismatchError(f"{where} was written with other storage settings ({', '.join(storage)}: "
                                    f"{stored.storage.model_dump()}); use the same options or another --store path")


def check_encoder(stored: Manifest, expected: EncoderDescription, where: str) -> None:
    """A reader that needs features of one specific encoder (a trained decoder) checks this."""
    diff = [d for d in encoder_differences(stored.encoder, expected) if d != "precision"]
    if diff:
        raise ManifestMismatchError(
            f"{where} holds features of encoder {stored.encoder.name!r} ({stored.encoder.weights_source}), "
            f"expected {expected.name!r} ({expected.weights_source}); they differ in {', '.join(diff[:4])}")
    check_precision(stored.encoder, expected, where, writing=False, wanting="the decoder was trained on",
                    hint=f"extract a store with --precision {expected.precision} for it")
