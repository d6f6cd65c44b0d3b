"""Chunk size, stage grouping and threads: defaults and checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import LpdaskError

MIN_CHUNK = 16
MAX_CHUNK = 8192
GPU_CHUNKS = 2
DEFAULT_TILE_PAD = 10
"""Real-ESRGAN's default ``tile_pad``, for tile mode."""


@dataclass(frozen=True)
class Plan:
    """How a job is cut up.

    chunk: side of a chunk in input pixels. 256 keeps one x4 tail task near 1 GiB of activations.
    blocks_per_stage: RRDBs per trunk stage. One block (halo 15) costs least compute on a CPU; the
        planner of a later release will weigh that against the activation I/O per stage.
    threads: chunks computed at once (0: one per CPU core, or 1 on a GPU); torch gets the cores
        divided among them.
    """

    chunk: int = 256
    blocks_per_stage: int = 1
    threads: int = 0

    def __post_init__(self) -> None:
        if not MIN_CHUNK <= self.chunk <= MAX_CHUNK:
            raise LpdaskError(f"--chunk {self.chunk} is out of range ({MIN_CHUNK} to {MAX_CHUNK} pixels)")
        if self.blocks_per_stage < 0:
            raise LpdaskError(f"--blocks-per-stage {self.blocks_per_stage} must be at least 0 "
                              "(0: the whole network as one stage)")
        if self.threads < 0:
            raise LpdaskError(f"--threads {self.threads} must be at least 1 (0 picks one per core)")

    def workers(self, device_type: str) -> int:
        """Chunks at once: as asked, else one per core on a CPU and two per GPU (one chunk's reads and
        writes overlap the other's compute; the kernels themselves queue on one stream)."""
        if self.threads:
            return self.threads
        return GPU_CHUNKS if device_type == "cuda" else os.cpu_count() or 1
