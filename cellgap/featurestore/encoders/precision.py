"""The encoder's compute precision: chosen once per store, recorded in its manifest, applied as autocast.

bf16 and fp16 features differ from fp32 ones by far more than storage rounding, so a store must never
mix them (a resume on another device) and a decoder trained on one must not silently read the other.
Kept free of a torch import at module level: the manifest, `store info` and the CLI's parser use it.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

Precision = Literal["fp32", "bf16", "fp16"]
PrecisionChoice = Literal["auto", "fp32", "bf16", "fp16"]
RecordedPrecision = Literal["fp32", "bf16", "fp16", "unknown"]  # "unknown": a manifest older than the field
PRECISIONS: tuple[str, ...] = get_args(Precision)
UNKNOWN = "unknown"


def resolve_precision(choice: str, device_type: str) -> Precision:
    """`auto` is bf16 on a CUDA device that computes it natively, else fp32 (CPU stores stay bit-exact fp32)."""
    if choice != "auto":
        if choice not in PRECISIONS:
            raise ValueError(f"precision {choice!r}: use auto, {', '.join(PRECISIONS)}")
        return choice  # type: ignore[return-value]
    if device_type != "cuda":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The autocast context of a precision on a device; fp32 is no autocast at all."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def describe_precision(precision: str) -> str:
    """How `store info` says it: unknown is said as unknown, never guessed from the device."""
    if precision == UNKNOWN:
        return "unknown (written before cellgap recorded it: bf16 if extracted on a GPU, fp32 on a CPU)"
    return {"fp32": "fp32 (no autocast)", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(precision, precision)
