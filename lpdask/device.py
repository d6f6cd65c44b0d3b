"""Which torch device runs the stages."""

from __future__ import annotations

import torch

from .errors import LpdaskError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise LpdaskError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise LpdaskError(f"device {device!r} requested but no CUDA GPU is available")
    if chosen.type not in ("cpu", "cuda"):
        raise LpdaskError(f"device {device!r} is not supported (use cpu, cuda, cuda:N or auto)")
    return chosen


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """fp32 anywhere; fp16 and bf16 on CUDA only (on a CPU they are many times slower, not faster)."""
    if precision not in PRECISIONS:
        raise LpdaskError(f"unknown precision {precision!r} (use {', '.join(PRECISIONS)})")
    if precision != "fp32" and device.type != "cuda":
        raise LpdaskError(f"--precision {precision} needs a CUDA device; on {device.type} use fp32")
    return PRECISIONS[precision]
