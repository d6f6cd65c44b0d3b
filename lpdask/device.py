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
