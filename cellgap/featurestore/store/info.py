"""What `cellgap store info` reports: manifest, arrays with shapes, dtypes and bytes, completion."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cellgap.featurestore.encoders.precision import describe_precision
from cellgap.featurestore.store import layout
from cellgap.featurestore.store.arrays import array_at, metadata_v3
from cellgap.featurestore.store.reader import FeatureStore


def array_paths(store: FeatureStore) -> list[str]:
    paths = [layout.IMAGE, layout.INSTANCES, layout.CLASSES, layout.NAME, layout.SOURCE, layout.TISSUE, layout.SPLIT,
             layout.ORIGIN, layout.pixel_hash_path(store.manifest.pixel_hash), layout.DONE]
    for view in store.views:
        for name in store.manifest.layer_names:
            paths.append(layout.feature_path(name, view))
            if store.manifest.storage.dtype == "int8":
                paths.append(layout.scale_path(name, view))
    return [p for p in paths if p in store.group]


def _bytes(store: FeatureStore, path: str) -> int | None:
    root = store._root
    if root is None:
        return None
    folder = Path(root) / path
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def describe(store: FeatureStore) -> dict[str, Any]:
    """A JSON-ready description of the store."""
    arrays: list[dict[str, Any]] = []
    for path in array_paths(store):
        array = array_at(store.group, path)
        arrays.append({
            "path": path, "shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks),
            "shards": list(array.shards) if array.shards else None,
            "codecs": [type(c).__name__ for c in metadata_v3(array).codecs], "bytes": _bytes(store, path),
        })
    done = int(store.done.sum())
    feature_bytes = sum(a["bytes"] or 0 for a in arrays if a["path"].startswith((layout.FEATURES, layout.VIEWS)))
    return {
        "location": store.location,
        "complete": done == store.n_tiles,
        "tiles": {"total": store.n_tiles, "done": done, "splits": store.split_counts()},
        "bytes": {"total": sum(a["bytes"] or 0 for a in arrays), "features_per_tile": feature_bytes / max(done, 1)},
        "manifest": store.manifest.model_dump(mode="json"),
        "arrays": arrays,
    }


def format_info(info: dict[str, Any]) -> str:
    """A readable summary (the JSON form has everything)."""
    m = info["manifest"]
    enc, ds, st = m["encoder"], m["dataset"], m["storage"]
    lines = [
        f"store     {info['location']}",
        f"complete  {info['tiles']['done']}/{info['tiles']['total']} tiles"
        f" ({'complete' if info['complete'] else 'incomplete: rerun extract to resume'})",
        "splits    " + ", ".join(f"{k} {v}" for k, v in info["tiles"]["splits"].items()),
        f"dataset   {ds['format']}:{ds['path']}  tile {ds['tile_size']}px  magnification "
        f"{_magnification(ds)}  classes {', '.join(ds['class_names']) or '(none)'}",
        f"encoder   {enc['name']} [{enc['architecture']}]  weights {enc['weights_source']} sha256 {enc['weights_sha256'][:16]}",
        f"precision {describe_precision(enc.get('precision', 'unknown'))}",
        f"input     {enc['input_size']}px resize={enc['resize']} mean={tuple(round(v, 3) for v in enc['mean'])} "
        f"std={tuple(round(v, 3) for v in enc['std'])} position-embedding: {enc['position_embedding']}",
        f"storage   {st['dtype']} codec={st['codec']} {st['shard_tiles']} tiles/shard views={','.join(st['views'])}",
        f"bytes     {info['bytes']['total'] / 2**20:.1f} MiB total, features {info['bytes']['features_per_tile'] / 2**10:.0f} KiB/tile",
        f"versions  cellgap {m['cellgap_version']}, timm {enc['timm_version']}, torch {enc['torch_version']}; "
        f"schema {m['schema_version']}",
        "layers:",
    ]
    for layer in enc["layers"]:
        lines.append(f"  {layer['name']:<10} stride {layer['stride']:>5g}  {layer['channels']:>5} x {layer['height']} x {layer['width']}")
    lines.append("arrays:")
    for a in info["arrays"]:
        size = f"{a['bytes'] / 2**20:9.2f} MiB" if a["bytes"] is not None else "        ?"
        lines.append(f"  {a['path']:<28} {str(tuple(a['shape'])):<24} {a['dtype']:<8} {size}")
    return "\n".join(lines)


def _magnification(dataset: dict[str, Any]) -> str:
    """`40x`, `20x (flag)`, `40x (assumed)` or `unknown` (stores written before the flag existed)."""
    if dataset.get("magnification") is None:
        return "unknown"
    source = dataset.get("magnification_source", "dataset")
    mpp = f", {dataset['mpp']} mpp" if dataset.get("mpp") else ""
    return f"{dataset['magnification']}x" + (f" ({source}{mpp})" if source != "dataset" or mpp else "")
