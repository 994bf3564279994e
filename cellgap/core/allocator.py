"""Keeping freed tensor memory in the process instead of handing it back to the kernel after every op.

glibc serves large allocations with fresh mmaps and returns them with munmap, so on a CPU every
activation of every forward pass is a new mapping whose pages the kernel faults in and zeroes.
Measured here (EfficientNet-Lite0, 2 threads): 14 ms of kernel time per tile and 53 tiles/s at
batch 8, against 0 ms and 102 tiles/s when large blocks come from the heap and stay there (batch
32: 44 against 93 tiles/s). glibc's own adaptive threshold gets there only now and then, and never
for blocks over 32 MiB, which is why CPU timings used to swing by 2x. Other C libraries (musl,
macOS) are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
MiB = 2**20


class AllocatorSettings(BaseModel):
    """glibc malloc parameters: no mmap'd blocks, and free memory at the heap's top kept up to `trim_threshold`."""

    model_config = ConfigDict(frozen=True)

    mmap_max: int = 0
    trim_threshold: int = 1024 * MiB
    top_pad: int = 64 * MiB


def keep_freed_memory(settings: AllocatorSettings | None = None) -> bool:
    """Apply the settings to glibc's malloc; False (and nothing changed) where the C library is not glibc."""
    settings = settings or AllocatorSettings()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "gnu_get_libc_version"):
        log.debug("not glibc: the allocator keeps its own settings")
        return False
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = all(libc.mallopt(option, value) == 1 for option, value in (
        (M_MMAP_MAX, settings.mmap_max), (M_TRIM_THRESHOLD, settings.trim_threshold), (M_TOP_PAD, settings.top_pad)))
    if not applied:
        log.debug("glibc refused some malloc settings: %s", settings)
    return applied
