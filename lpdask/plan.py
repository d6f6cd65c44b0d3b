"""The plan: how a job is cut up (chunk, stage grouping, which executor, chunks at once) and,
when the planner (:mod:`lpdask.planner`) made it, what it predicted. Its JSON form is what a job's
identity records, so a resumed job keeps the plan it started with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .options import DEFAULT_TILE_PAD, MAX_CHUNK, MIN_CHUNK, check_chunk, check_grouping, check_strip, check_threads, check_tile_rows

GPU_CHUNKS = 2
_STORED_AS = {"zarr": "staged", "memory": "whole", "stream": "stream"}
"""The executor an identity recorded before plans named it (as where its activations lived)."""

__all__ = ["DEFAULT_TILE_PAD", "GPU_CHUNKS", "MAX_CHUNK", "MIN_CHUNK", "Plan"]


@dataclass(frozen=True)
class Plan:
    """How a job is cut up, and the planner's prediction of its cost (zeros where the plan was given).

    chunk: side of a chunk in input pixels; streaming: width of a tile (a column band).
    blocks_per_stage: RRDBs per trunk stage (Compact nets: 15 convs); 0 runs the whole network as
        one stage with its full halo.
    executor: the executor that runs it (:data:`lpdask.executors.EXECUTORS`): "staged" (stages pass
        activations through the work folder), "whole" (the whole network is one stage, nothing
        stored between stages), "stream" (tiles stream row strips through every stage, activations
        held in memory only while needed), "lazy" (one dask graph).
    workers: chunks (tiles) computed at once (0: one per CPU core, or two per GPU, one tile per
        GPU); torch gets the cores divided among them.
    strip: streaming: rows (input pixels) each stage computes at a time.
    tile_rows: streaming: height of a tile in input pixels (0: the image's height).
    """

    chunk: int = 256
    blocks_per_stage: int = 1
    executor: str = "staged"
    workers: int = 0
    strip: int = 0
    tile_rows: int = 0
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
    scratch_bytes: int = 0
    """Work-folder space the activations need at most (none when nothing is stored)."""

    def __post_init__(self) -> None:
        check_chunk(self.chunk)
        check_grouping(self.blocks_per_stage)
        check_threads(self.workers)
        if self.executor == "stream":
            check_strip(self.strip)
            check_tile_rows(self.tile_rows)

    @classmethod
    def given(cls, chunk: int, blocks_per_stage: int, workers: int = 0, strip: int | None = None,
              tile_rows: int = 0) -> Plan:
        """A plan the user fixed: streamed when ``strip`` is given; otherwise staged, or the whole
        network as one stage (which keeps nothing between stages) for ``blocks_per_stage`` 0."""
        if strip:
            return cls(chunk, max(1, blocks_per_stage), "stream", workers, strip, tile_rows)
        return cls(chunk, blocks_per_stage, "whole" if blocks_per_stage == 0 else "staged", workers)

    def to_json(self) -> dict[str, Any]:
        """What the job's identity records: the parts that change the result's bytes on disk."""
        own = {"chunk": self.chunk, "blocks_per_stage": self.blocks_per_stage, "executor": self.executor}
        if self.executor != "stream":
            return own
        return {**own, "strip": self.strip, **({"tile_rows": self.tile_rows} if self.tile_rows else {})}

    @classmethod
    def from_json(cls, fields: dict[str, Any], workers: int = 0) -> Plan:
        executor = fields.get("executor") or _STORED_AS.get(fields.get("storage", "zarr"), "staged")
        return cls(int(fields["chunk"]), int(fields["blocks_per_stage"]), executor, workers,
                   int(fields.get("strip", 0)), int(fields.get("tile_rows", 0)))

    def chunks_at_once(self, device_type: str) -> int:
        """As asked, else one per core on a CPU; on a GPU two chunks (one chunk's reads and writes
        overlap the other's compute; the kernels themselves queue on one stream), or one tile
        (whose writer thread overlaps its compute)."""
        if self.workers:
            return self.workers
        if device_type == "cuda":
            return 1 if self.executor == "stream" else GPU_CHUNKS
        return os.cpu_count() or 1

    def describe(self) -> str:
        grouping = "whole network, one stage" if self.blocks_per_stage == 0 else f"{self.blocks_per_stage} per stage"
        workers = f"{self.workers} worker{'s' if self.workers > 1 else ''}"
        if self.executor == "stream":
            size = f"{self.chunk} x {self.tile_rows} px" if self.tile_rows else f"{self.chunk} px wide"
            cut = (f"stream: tiles {size} in strips of {self.strip} rows, blocks {grouping} "
                   f"({self.stages} stages), {self.chunks} tile{'s' if self.chunks > 1 else ''} on {workers}")
        else:
            cut = (f"{self.executor}: chunk {self.chunk}, blocks {grouping} ({self.stages} stages), "
                   f"{self.chunks} chunks on {workers}")
        return (f"{cut}: predicted {self.seconds:.1f} s (compute {self.compute_seconds:.1f} s, activation I/O "
                f"{self.io_seconds:.1f} s), compute x{self.compute_overhead:.3f} of whole-image, scratch "
                f"{self.scratch_bytes / 1e9:.2f} GB, peak memory {self.peak_memory / 2**30:.2f} GiB, "
                f"read amplification {self.read_amplification:.2f}")
