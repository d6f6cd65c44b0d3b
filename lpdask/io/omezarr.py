"""Write results as OME-Zarr (NGFF 0.5, Zarr v3): level 0 chunk by chunk, then a pyramid from it
(or its first levels with level 0, by an executor that writes whole rows of chunks: :meth:`OmeZarrSink.level`).

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
from ..pixels import working_float
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
                 nodata: float | None = None) -> None:
        """A new group at ``path`` (``status`` goes into its lpdask attributes); :meth:`reopen` for one
        an earlier run began."""
        self._start(path, axes, chunk, nodata)
        group = zarr.open_group(str(self.path), mode="w-", zarr_format=3)
        group.attrs[STATUS_KEY] = {"complete": False, **(status or {})}
        channels = shape[axes.index("c")]
        chunks = tuple(chunk if a in "yx" else (channel_chunk or channels) if a == "c" else 1 for a in axes)
        self._level0 = group.create_array(
            "0", shape=shape, chunks=chunks, dtype=dtype, dimension_names=list(axes), fill_value=0)

    @classmethod
    def reopen(cls, path: str | os.PathLike[str] | Location, axes: str, shape: tuple[int, ...], dtype: np.dtype,
               chunk: int, nodata: float | None = None) -> OmeZarrSink:
        """The sink an earlier run of the same job began at ``path``, to resume it."""
        sink = cls.__new__(cls)
        sink._start(path, axes, chunk, nodata)
        sink._level0 = zarr.open_array(str(sink.path / "0"), mode="r+")
        if sink._level0.shape != tuple(shape) or sink._level0.dtype != dtype:
            raise ValueError(f"{sink.path}: level 0 is {sink._level0.shape}, expected {shape}")
        return sink

    def _start(self, path: str | os.PathLike[str] | Location, axes: str, chunk: int, nodata: float | None) -> None:
        self.path = Location.of(path)
        self.axes = axes
        self.chunk = chunk
        self.nodata = nodata
        """The value of missing pixels: pyramid means leave them out."""
        self._levels: dict[int, zarr.Array] = {}
        self._level0: zarr.Array | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_level0": None, "_levels": {}}  # workers reopen the arrays themselves

    @property
    def level0(self) -> zarr.Array:
        if self._level0 is None:
            self._level0 = zarr.open_array(str(self.path / "0"), mode="r+")
        return self._level0

    def write(self, box: Box, pixels: np.ndarray, plane: dict[str, int] | None = None,
              channels: tuple[int, ...] | None = None, level: int = 0) -> None:
        """Store (k, h, w) pixels at ``box`` of ``plane`` of level ``level``, into channels
        ``channels`` (default all)."""
        plane = plane or {}
        ys, xs = box.slices()
        first = channels[0] if channels else 0
        c = slice(first, first + len(channels)) if channels else slice(None)
        index = tuple(ys if a == "y" else xs if a == "x" else c if a == "c" else plane.get(a, 0) for a in self.axes)
        if level == 0:
            self.level0[index] = pixels
        else:
            if level not in self._levels:
                self._levels[level] = self.level(level)
            self._levels[level][index] = pixels

    def copy(self, level0: zarr.Array, box: Box, **compute: Any) -> None:
        """Store the part ``box`` (y and x) of another image's level 0 as this one's level 0 (a region
        of a larger result), a stored chunk at a time."""
        ys, xs = box.slices()
        part = da.from_zarr(level0)[(..., ys, xs)]
        da.store(part.rechunk(self.level0.chunks), self.level0, lock=False, **compute)

    def level_shapes(self) -> list[tuple[int, ...]]:
        """Every level's shape: level 0, then halves (rounded up) down to ``THUMBNAIL`` px a side."""
        shapes = [tuple(self.level0.shape)]
        while max(shapes[-1][-2:]) > THUMBNAIL:
            shapes.append((*shapes[-1][:-2], *(math.ceil(n / 2) for n in shapes[-1][-2:])))
        return shapes

    def level_chunks(self, index: int) -> tuple[int, ...]:
        shape = self.level_shapes()[index]
        return (*self.level0.chunks[:-2], min(self.chunk, shape[-2]), min(self.chunk, shape[-1]))

    def level(self, index: int) -> zarr.Array:
        """Pyramid level ``index`` (1 and up) to write into: opened as it is (a resumed run), or created."""
        shape, chunks = self.level_shapes()[index], self.level_chunks(index)
        path = str(self.path / str(index))
        try:
            array = zarr.open_array(path, mode="r+")
            if array.shape == shape and array.chunks == chunks and array.dtype == self.level0.dtype:
                return array
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.NodeTypeValidationError):
            pass
        group = zarr.open_group(str(self.path), mode="r+")
        return group.create_array(str(index), shape=shape, chunks=chunks, dtype=self.level0.dtype,
                                  dimension_names=list(self.axes), fill_value=0, overwrite=True)

    def finish(self, meta: ImageMetadata, name: str, written: int = 1, **compute: Any) -> int:
        """Write the pyramid levels from ``written`` on (2x2 means, each from the stored level above;
        levels below ``written`` were written with level 0), then the NGFF metadata (``meta``
        describes level 0: the input's metadata rescaled). Returns the level count."""
        from .ngff import ngff_attributes

        group = zarr.open_group(str(self.path), mode="r+")
        shapes = self.level_shapes()
        previous = self.level(written - 1) if written > 1 else self.level0
        for index in range(written, len(shapes)):
            source = da.from_zarr(previous)
            halved = source.map_blocks(half, self.nodata, dtype=source.dtype, chunks=(
                *source.chunks[:-2], *(tuple(math.ceil(n / 2) for n in c) for c in source.chunks[-2:])))
            level = group.create_array(str(index), shape=shapes[index], chunks=self.level_chunks(index),
                                       dtype=previous.dtype, dimension_names=list(self.axes), fill_value=0,
                                       overwrite=True)
            da.store(halved.rechunk(level.chunks), level, lock=False, **compute)
            previous = level
        attributes = ngff_attributes(meta, len(shapes), name, previous.dtype)
        own = attributes.pop(STATUS_KEY, {})
        group.attrs.update(attributes)
        group.attrs[STATUS_KEY] = {**group.attrs.get(STATUS_KEY, {}), **own, "complete": True}
        return len(shapes)


def write_label(path: str | os.PathLike[str] | Location, name: str, mask: np.ndarray, meta: ImageMetadata,
                factor: int) -> None:
    """Store ``mask`` (y, x booleans, each ``factor`` x ``factor`` pixels of the image at ``path``) as
    its NGFF label image ``labels/<name>`` (1 inside the mask, 0 outside), with the image's axes."""
    from .ngff import NGFF_VERSION, label_attributes

    group = zarr.open_group(str(Location.of(path)), mode="r+")
    labels = group.require_group("labels")
    shape = tuple(mask.shape[0] if a == "y" else mask.shape[1] if a == "x" else 1 for a in meta.axis_names)
    image = labels.create_group(name, overwrite=True)
    chunks = tuple(min(1024, n) for n in shape)
    array = image.create_array("0", shape=shape, chunks=chunks, dtype=np.uint8, dimension_names=list(meta.axis_names),
                               fill_value=0)
    array[...] = mask.astype(np.uint8).reshape(shape)
    image.attrs.update(label_attributes(meta, name, factor))
    names = list(labels.attrs.get("ome", {}).get("labels", []))
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": sorted({*names, name})}


def half(block: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """2x2 mean over the last two axes (y, x); an odd last row or column is averaged with itself.
    With ``nodata``, the mean of the pixels that are not it, or ``nodata`` where all four are."""
    values = block.astype(working_float(block.dtype))
    if values.shape[-2] % 2:
        values = np.concatenate([values, values[..., -1:, :]], axis=-2)
    if values.shape[-1] % 2:
        values = np.concatenate([values, values[..., -1:]], axis=-1)
    quads = (values[..., 0::2, 0::2], values[..., 1::2, 0::2], values[..., 0::2, 1::2], values[..., 1::2, 1::2])
    if nodata is None:
        mean = (quads[0] + quads[1] + quads[2] + quads[3]) / 4
    else:
        held = [~np.isnan(q) if math.isnan(nodata) else q != np.float32(nodata) for q in quads]
        count = sum(h.astype(np.float32) for h in held)
        total = sum(np.where(h, q, np.float32(0)) for h, q in zip(held, quads))
        mean = np.where(count > 0, total / np.maximum(count, 1), np.float32(nodata))
        if block.dtype.kind in "ui" and not math.isnan(nodata):  # a mean of data rounded onto nodata: one off
            top = np.iinfo(block.dtype).max
            mean = np.where((count > 0) & (mean.round() == nodata), nodata + 1 if nodata < top else nodata - 1, mean)
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
