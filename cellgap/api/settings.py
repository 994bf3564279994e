"""Typed service settings read from the environment (prefix `CELLGAP_`), validated once at startup."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import DirectoryPath, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from cellgap.core.limits import MAX_IMAGE_PIXELS

MIB = 1024 * 1024


class Settings(BaseSettings):
    """Everything the service reads from its environment; `CELLGAP_RUN_DIR=/runs/x` sets `run_dir`."""

    model_config = SettingsConfigDict(env_prefix="CELLGAP_", extra="ignore", frozen=True, env_ignore_empty=True)

    run_dir: Path | None = Field(None, description="trained run to serve; without one only /v1/evaluate works")
    slides_root: DirectoryPath | None = Field(None, description=(
        "folder of whole-slide images that /v1/predict/region may read (read-only; paths outside it are refused); "
        "unset: that route is off"))
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads of the model (torch); default: torch's")
    api_key: SecretStr | None = Field(None, description="when set, every /v1 route needs it in X-API-Key")
    max_body_bytes: int = Field(64 * MIB, ge=1024, description="largest request body accepted (413 above)")
    max_json_bytes: int = Field(8 * MIB, ge=1024, description=(
        "largest JSON body of /v1/evaluate (413 above, before it is parsed); JSON arrays are for small tiles"))
    max_image_pixels: int = Field(MAX_IMAGE_PIXELS, ge=1, description="largest image (height x width) decoded or predicted")
    max_files: int = Field(32, ge=1, le=1000, description="most files in one batch or evaluate request")
    batch_size: int = Field(8, ge=1, le=256, description="most tiles the model sees in one forward pass")
    batch_wait_ms: float = Field(10.0, ge=0.0, le=1000.0,
                                 description="longest wait for requests already arriving to join a batch")
    max_decoding: int = Field(2, ge=1, le=64, description=(
        "uploads decoded at the same time; the others wait, holding only their compressed bytes"))
    queue_size: int = Field(256, ge=1, description=(
        "image area (in tiles) admitted for the model, counted from the file header before decoding; beyond it 503"))
    predict_timeout_s: float = Field(300.0, gt=0.0, description="longest wait for one prediction (503 after)")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 answers")
    header_timeout_s: float = Field(10.0, gt=0.0, le=3600.0, description=(
        "longest time a connection may take to send a request's headers (closed after); `cellgap serve` only"))
    body_timeout_s: float = Field(60.0, gt=0.0, le=3600.0, description=(
        "longest time to receive a request's whole body, from its headers on (408 after)"))
    read_timeout_s: float = Field(10.0, gt=0.0, le=3600.0, description=(
        "longest wait for the next piece of a request's body (408 after)"))
    keep_alive_s: int = Field(5, ge=1, le=3600, description=(
        "an idle keep-alive connection is closed after this; `cellgap serve` only"))
    max_connections: int = Field(256, ge=1, le=100_000, description=(
        "open connections (and requests in progress) at once; beyond it 503; `cellgap serve` only"))
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024, description=(
        "largest request line and headers (400 above); `cellgap serve` only"))
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(True, description="one log line per request (client, method, path, status)")
    docs: bool = Field(True, description="serve the interactive documentation at /docs (packaged assets, no CDN)")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process's environment, read once."""
    return Settings()
