"""The plan: how a job is cut up (chunk, stage grouping, where activations live, chunks at once) and,
when the planner (:mod:`lpdask.planner`) made it, what it predicted. Its JSON form is what a job's
identity records, so a resumed job keeps the plan it started with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from .options import MAX_CHUNK, MIN_CHUNK, check_chunk, check_grouping, check_threads

GPU_CHUNKS = 2
DEFAULT_TILE_PAD = 10
"""Real-ESRGAN's default ``tile_pad``, for tile mode."""
Storage = Literal["zarr", "memory"]

__all__ = ["DEFAULT_TILE_PAD", "GPU_CHUNKS", "MAX_CHUNK", "MIN_CHUNK", "Plan", "Storage"]


@dataclass(frozen=True)
class Plan:
    """How a job is cut up, and the planner's prediction of its cost (zeros where the plan was given).

    chunk: side of a chunk in input pixels.
    blocks_per_stage: RRDBs per trunk stage (Compact nets: 15 convs); 0 runs the whole network as
        one stage with its full halo.
    storage: "zarr": stages pass activations through the work folder; "memory": the whole network
        is one stage, so nothing is stored between stages.
    workers: chunks computed at once (0: one per CPU core, or two per GPU); torch gets the cores
        divided among them.
    """

    chunk: int = 256
    blocks_per_stage: int = 1
    storage: Storage = "zarr"
    workers: int = 0
    stages: int = 0
    chunks: int = 0
    seconds: float = 0.0
    compute_seconds: float = 0.0
    io_seconds: float = 0.0
    compute_overhead: float = 1.0
    """Multiply-adds over those of whole-image inference (halo recomputation)."""
    bytes_written: int = 0
    peak_memory: int = 0
    read_amplification: float = 1.0
    """Bytes read from work arrays over the bytes of the windows asked for."""

    def __post_init__(self) -> None:
        check_chunk(self.chunk)
        check_grouping(self.blocks_per_stage)
        check_threads(self.workers)

    @classmethod
    def given(cls, chunk: int, blocks_per_stage: int, workers: int = 0) -> Plan:
        """A plan the user fixed: the whole network as one stage keeps nothing between stages."""
        return cls(chunk, blocks_per_stage, "memory" if blocks_per_stage == 0 else "zarr", workers)

    def to_json(self) -> dict[str, Any]:
        """What the job's identity records: the parts that change the result's bytes on disk."""
        return {"chunk": self.chunk, "blocks_per_stage": self.blocks_per_stage, "storage": self.storage}

    @classmethod
    def from_json(cls, fields: dict[str, Any], workers: int = 0) -> Plan:
        return cls(int(fields["chunk"]), int(fields["blocks_per_stage"]), fields.get("storage", "zarr"), workers)

    def chunks_at_once(self, device_type: str) -> int:
        """As asked, else one per core on a CPU and two per GPU (one chunk's reads and writes overlap
        the other's compute; the kernels themselves queue on one stream)."""
        if self.workers:
            return self.workers
        return GPU_CHUNKS if device_type == "cuda" else os.cpu_count() or 1

    def describe(self) -> str:
        grouping = "whole network, one stage" if self.storage == "memory" else f"{self.blocks_per_stage} per stage"
        return (f"chunk {self.chunk}, blocks {grouping} ({self.stages} stages), {self.chunks} chunks on "
                f"{self.workers} worker{'s' if self.workers > 1 else ''}: predicted {self.seconds:.1f} s "
                f"(compute {self.compute_seconds:.1f} s, activation I/O {self.io_seconds:.1f} s), compute x"
                f"{self.compute_overhead:.3f} of whole-image, {self.bytes_written / 1e9:.2f} GB written, "
                f"peak memory {self.peak_memory / 2**30:.2f} GiB, read amplification {self.read_amplification:.2f}")
