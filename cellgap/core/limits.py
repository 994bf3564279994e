"""Size limits shared by the command line and the service, defined once and free of torch imports."""
from __future__ import annotations

MAX_IMAGE_PIXELS = 4096 * 4096  # largest image (height x width) decoded or predicted: `--max-pixels`, CELLGAP_MAX_IMAGE_PIXELS
MAX_TILE_SIDE = 2048  # largest `--tile-size` / `--input-size`: one such tile already takes 12 MiB of pixels
MAX_SYNTHETIC_TILES = 100_000  # largest N of `synthetic:N`
MAX_SEED = 2**32 - 1  # seeds are taken by numpy and torch alike
