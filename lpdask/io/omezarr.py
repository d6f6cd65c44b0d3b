"""Write results as OME-Zarr (NGFF 0.5, Zarr v3): level 0 chunk by chunk, then a pyramid from it.

The ``ome`` metadata is written last, so a folder without it is an unfinished result.
"""

from __future__ import annotations

import math
import os
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..chunks import Box
from .locations import Location
from .metadata import ImageMetadata

STATUS_KEY = "lpdask"
THUMBNAIL = 256
"""The pyramid stops at the first level whose height and width are both at most this."""


class OmeZarrSink:
    """An OME-Zarr image group being written; level ``0`` has the axes ``axes`` (NGFF order,
    ending in y, x), chunked one plane and ``channel_chunk`` channels deep."""

    def __init__(self, path: str | os.PathLike[str] | Location, axes: str, shape: tuple[int, ...], dtype: np.dtype,
                 chunk: int, channel_chunk: int | None = None, status: dict[str, Any] | None = None,
                 resume: bool = False) -> None:
        self.path = Location.of(path)
        self.axes = axes
        self.chunk = chunk
        if resume:
            self._level0: zarr.Array | None = zarr.open_array(str(self.path / "0"), mode="r+")
            if self._level0.shape != tuple(shape) or self._level0.dtype != dtype:
                raise ValueError(f"{self.path}: level 0 is {self._level0.shape}, expected {shape}")
            return
        group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        group.attrs[STATUS_KEY] = {"complete": False, **(status or {})}
        channels = shape[axes.index("c")]
        chunks = tuple(chunk if a in "yx" else (channel_chunk or channels) if a == "c" else 1 for a in axes)
        self._level0 = group.create_array(
            "0", shape=shape, chunks=chunks, dtype=dtype, dimension_names=list(axes), fill_value=0)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_level0": None}  # workers reopen the array themselves

    @property
    def level0(self) -> zarr.Array:
        if self._level0 is None:
            self._level0 = zarr.open_array(str(self.path / "0"), mode="r+")
        return self._level0

    def write(self, box: Box, pixels: np.ndarray, plane: dict[str, int] | None = None,
              channels: tuple[int, ...] | None = None) -> None:
        """Store (k, h, w) pixels at ``box`` of ``plane``, into channels ``channels`` (default all)."""
        plane = plane or {}
        ys, xs = box.slices()
        first = channels[0] if channels else 0
        c = slice(first, first + len(channels)) if channels else slice(None)
        index = tuple(ys if a == "y" else xs if a == "x" else c if a == "c" else plane.get(a, 0) for a in self.axes)
        self.level0[index] = pixels

    def finish(self, meta: ImageMetadata, name: str, **compute: Any) -> int:
        """Write pyramid levels (2x2 means) from the stored level 0, then the NGFF metadata
        (``meta`` describes level 0: the input's metadata rescaled). Returns the level count."""
        from .ngff import ngff_attributes

        group = zarr.open_group(str(self.path), mode="r+")
        previous = self.level0
        levels = 1
        while max(previous.shape[-2:]) > THUMBNAIL:
            source = da.from_zarr(previous)
            half = source.map_blocks(_half, dtype=source.dtype, chunks=(
                *source.chunks[:-2], *(tuple(math.ceil(n / 2) for n in c) for c in source.chunks[-2:])))
            shape = half.shape
            chunks = (*previous.chunks[:-2], min(self.chunk, shape[-2]), min(self.chunk, shape[-1]))
            level = group.create_array(str(levels), shape=shape, chunks=chunks, dtype=previous.dtype,
                                       dimension_names=list(self.axes), fill_value=0, overwrite=True)
            da.store(half.rechunk(level.chunks), level, lock=False, **compute)
            previous, levels = level, levels + 1
        attributes = ngff_attributes(meta, levels, name, previous.dtype)
        own = attributes.pop(STATUS_KEY, {})
        group.attrs.update(attributes)
        group.attrs[STATUS_KEY] = {**group.attrs.get(STATUS_KEY, {}), **own, "complete": True}
        return levels


def _half(block: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes (y, x); an odd last row or column is averaged with itself."""
    values = block.astype(np.float32)
    if values.shape[-2] % 2:
        values = np.concatenate([values, values[..., -1:, :]], axis=-2)
    if values.shape[-1] % 2:
        values = np.concatenate([values, values[..., -1:]], axis=-1)
    mean = (values[..., 0::2, 0::2] + values[..., 1::2, 0::2] + values[..., 0::2, 1::2]
            + values[..., 1::2, 1::2]) / 4
    if block.dtype.kind == "f":
        return mean.astype(block.dtype)
    return mean.round().astype(block.dtype)


def is_complete(path: str | os.PathLike[str] | Location) -> bool:
    """Whether ``path`` holds a finished lpdask result."""
    try:
        group = zarr.open_group(str(Location.of(path)), mode="r")
    except Exception:
        return False
    return bool(group.attrs.get(STATUS_KEY, {}).get("complete")) and "ome" in group.attrs
