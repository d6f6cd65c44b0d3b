"""Chunk size, stage grouping and threads: defaults and checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .errors import LpdaskError

MIN_CHUNK = 16
MAX_CHUNK = 8192


@dataclass(frozen=True)
class Plan:
    """How a job is cut up.

    chunk: side of a chunk in input pixels. 256 keeps one x4 tail task near 1 GiB of activations.
    blocks_per_stage: RRDBs per trunk stage. One block (halo 15) costs least compute on a CPU; the
        planner of a later release will weigh that against the activation I/O per stage.
    threads: chunks computed at once; torch gets the cores divided among them.
    """

    chunk: int = 256
    blocks_per_stage: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        if not MIN_CHUNK <= self.chunk <= MAX_CHUNK:
            raise LpdaskError(f"--chunk {self.chunk} is out of range ({MIN_CHUNK} to {MAX_CHUNK} pixels)")
        if self.blocks_per_stage < 1:
            raise LpdaskError(f"--blocks-per-stage {self.blocks_per_stage} must be at least 1")
        if self.threads < 0:
            raise LpdaskError(f"--threads {self.threads} must be at least 1 (0 picks one per core)")

    @property
    def workers(self) -> int:
        return self.threads or os.cpu_count() or 1


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
