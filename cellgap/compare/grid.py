"""The grid as jobs: one StoreJob per (data set, encoder settings, layer set), one RunJob per store job and seed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cellgap.compare.config import (
    CompareConfig,
    DatasetEntry,
    EncoderEntry,
    ExtractSettings,
    slug,
)
from cellgap.featurestore.encoders.description import EncoderSettings
from cellgap.featurestore.extract.config import ExtractConfig


@dataclass(frozen=True)
class StoreJob:
    """Features of one encoder with one layer set over one data set (shared by encoder labels with equal settings)."""

    dataset: DatasetEntry
    encoder: EncoderEntry  # the first entry asking for these settings
    layers: str

    @property
    def key(self) -> str:
        return f"{self.dataset.name} / {self.encoder.encoder} / {self.layers}"

    @property
    def settings_key(self) -> tuple:
        e = self.encoder
        return (self.dataset.name, e.encoder, e.pretrained, str(e.weights), e.seed, e.input_size, self.layers)

    def encoder_settings(self) -> EncoderSettings:
        e = self.encoder
        return EncoderSettings(name=e.encoder, pretrained=e.pretrained, weights=e.weights, seed=e.seed,
                               layers=self.layers, tile_size=self.dataset.tile_size, input_size=e.input_size)

    def extract_config(self, store: str, extract: ExtractSettings, *, device: str | None = None,
                       progress: bool = False) -> ExtractConfig:
        return ExtractConfig(dataset=self.dataset.spec, store=store, encoder=self.encoder_settings(),
                             batch_size=self.encoder.batch_size, device=device or extract.device, dtype=extract.dtype,
                             codec=extract.codec, shard_tiles=extract.shard_tiles, views=extract.views,
                             split_seed=self.dataset.split_seed, progress=progress)

    def folder_stem(self) -> str:
        """Readable start of the store's folder name (a hash of the manifest follows it)."""
        return f"{slug(self.dataset.name)}-{slug(self.encoder.encoder)}-{slug(self.layers)}"


@dataclass(frozen=True)
class RunJob:
    """One decoder trained with one seed on one store job's features, under one encoder label."""

    store: StoreJob
    label: str  # the encoder's name in the table
    seed: int

    @property
    def key(self) -> str:
        return f"{self.store.dataset.name} / {self.label} / {self.store.layers} / seed {self.seed}"

    @property
    def row(self) -> tuple[str, str]:
        """(encoder label, layer set): the table row this run contributes to."""
        return self.label, self.store.layers

    def run_dir(self, report_dir: Path) -> Path:
        return (Path(report_dir) / "runs" / slug(self.store.dataset.name) / slug(self.label) / slug(self.store.layers)
                / f"seed{self.seed}")


@dataclass(frozen=True)
class Grid:
    stores: tuple[StoreJob, ...]
    runs: tuple[RunJob, ...]
    datasets: tuple[DatasetEntry, ...]
    rows: tuple[tuple[str, str], ...]  # (encoder label, layers) in config order
    seeds: tuple[int, ...]

    def runs_of(self, store: StoreJob) -> list[RunJob]:
        return [run for run in self.runs if run.store == store]

    def describe(self) -> list[str]:
        """The grid as printed at the start: its size, then one line per store job with its runs."""
        lines = [(f"grid: {len(self.datasets)} data set(s) x {len(self.rows)} encoder/layer set(s) x "
                  f"{len(self.seeds)} seed(s) = {len(self.runs)} runs on {len(self.stores)} store(s)")]
        for number, store in enumerate(self.stores, start=1):
            labels = sorted({run.label for run in self.runs_of(store)})
            lines.append(f"  store {number}: {store.key}  ->  runs: {', '.join(labels)} x seeds "
                         f"{', '.join(map(str, self.seeds))}")
        return lines


def expand(config: CompareConfig) -> Grid:
    """Every store job and run job of the config, in config order (data set, encoder, layer set, seed)."""
    stores: dict[tuple, StoreJob] = {}
    runs: list[RunJob] = []
    rows: list[tuple[str, str]] = []
    for dataset in config.datasets:
        for encoder in config.encoders:
            for layers in encoder.layers:
                # encoder labels with equal settings share the first one's store job
                job = StoreJob(dataset, encoder, layers)
                job = stores.setdefault(job.settings_key, job)
                if (encoder.name, layers) not in rows:
                    rows.append((encoder.name, layers))
                runs += [RunJob(job, encoder.name, seed) for seed in config.seeds]
    return Grid(tuple(stores.values()), tuple(runs), tuple(config.datasets), tuple(rows), tuple(config.seeds))
