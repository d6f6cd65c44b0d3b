"""Write results as OME-Zarr (NGFF 0.5, Zarr v3): level 0 chunk by chunk, then a pyramid from it.

The ``ome`` metadata is written last, so a folder without it is an unfinished result.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..chunks import Box

NGFF_VERSION = "0.5"
STATUS_KEY = "lpdask"


class OmeZarrSink:
    """An OME-Zarr image group being written: level ``0`` has axes (c, y, x)."""

    def __init__(self, path: str | os.PathLike[str], channels: int, height: int, width: int,
                 dtype: np.dtype, chunk: int) -> None:
        self.path = Path(path)
        self.chunk = chunk
        group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        group.attrs[STATUS_KEY] = {"complete": False}
        self.level0 = group.create_array(
            "0", shape=(channels, height, width), chunks=(channels, chunk, chunk), dtype=dtype,
            dimension_names=["c", "y", "x"], fill_value=0)

    @classmethod
    def reopen(cls, path: str | os.PathLike[str]) -> OmeZarrSink:
        sink = cls.__new__(cls)
        sink.path = Path(path)
        sink.level0 = zarr.open_array(str(sink.path / "0"), mode="r+")
        sink.chunk = sink.level0.chunks[-1]
        return sink

    def write(self, box: Box, pixels: np.ndarray) -> None:
        """Store (c, h, w) pixels at ``box`` of level 0."""
        ys, xs = box.slices()
        self.level0[:, ys, xs] = pixels

    def finish(self, pixel_size: float, name: str, min_size: int = 256, **compute: Any) -> int:
        """Write pyramid levels (2x2 means) from the stored level 0, then the NGFF metadata.

        ``pixel_size`` is level 0's pixel size in input pixels (1 / scale). Returns the level count.
        """
        group = zarr.open_group(str(self.path), mode="r+")
        previous = self.level0
        levels = 1
        while max(previous.shape[1:]) > min_size:
            source = da.from_zarr(previous)
            half = source.map_blocks(_half, dtype=source.dtype, chunks=(
                source.chunks[0], *(tuple(math.ceil(n / 2) for n in c) for c in source.chunks[1:])))
            shape = half.shape
            level = group.create_array(
                str(levels), shape=shape, chunks=(shape[0], min(self.chunk, shape[1]), min(self.chunk, shape[2])),
                dtype=previous.dtype,
                dimension_names=["c", "y", "x"], fill_value=0, overwrite=True)
            da.store(half.rechunk(level.chunks), level, lock=False, **compute)
            previous, levels = level, levels + 1
        datasets = [
            {"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, pixel_size * 2**k, pixel_size * 2**k]}]}
            for k in range(levels)
        ]
        group.attrs["ome"] = {
            "version": NGFF_VERSION,
            "multiscales": [{
                "name": name,
                "axes": [{"name": "c", "type": "channel"},
                         {"name": "y", "type": "space"},
                         {"name": "x", "type": "space"}],
                "datasets": datasets,
            }],
        }
        group.attrs[STATUS_KEY] = {"complete": True}
        return levels


def _half(block: np.ndarray) -> np.ndarray:
    """2x2 mean of (c, h, w) pixels; an odd last row or column is averaged with itself."""
    values = block.astype(np.float32)
    if values.shape[1] % 2:
        values = np.concatenate([values, values[:, -1:]], axis=1)
    if values.shape[2] % 2:
        values = np.concatenate([values, values[:, :, -1:]], axis=2)
    mean = (values[:, 0::2, 0::2] + values[:, 1::2, 0::2] + values[:, 0::2, 1::2] + values[:, 1::2, 1::2]) / 4
    if block.dtype.kind == "f":
        return mean.astype(block.dtype)
    return mean.round().astype(block.dtype)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a finished lpdask result."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:
        return False
    return bool(group.attrs.get(STATUS_KEY, {}).get("complete")) and "ome" in group.attrs
