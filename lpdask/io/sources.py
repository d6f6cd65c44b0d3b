"""Open TIFF and Zarr inputs lazily and read windows of them; nothing reads a whole image."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from ..chunks import Box
from ..errors import LpdaskError
from ..pixels import check_dtype

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class Source:
    """A picklable description of an input image; each process opens the file itself."""

    path: str
    kind: str  # "tiff" or "zarr"
    array_path: str  # zarr: the array inside a group ("" for a bare array)
    height: int
    width: int
    channels: int
    dtype: np.dtype
    channel_axis: int  # 0 for (c, y, x), 2 for (y, x, c)

    def read(self, box: Box) -> np.ndarray:
        """The pixels of ``box`` as (h, w, c)."""
        array = _opened(self)
        ys, xs = box.slices()
        if self.channel_axis == 0:
            return np.moveaxis(np.asarray(array[:, ys, xs]), 0, -1)
        return np.asarray(array[ys, xs, :])


def open_source(path: str | os.PathLike[str]) -> Source:
    """Describe the image at ``path`` (TIFF file, Zarr array or OME-Zarr group); check it is usable."""
    p = Path(path)
    if not p.exists():
        raise LpdaskError(f"input not found: {p}")
    if p.is_dir():
        array, array_path = _open_zarr(p)
        kind = "zarr"
    else:
        _check_tiff(p)
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, series.shape, series.dtype
        return _describe(str(p), "tiff", "", _layout_from_axes(p, axes), shape, dtype)
    return _describe(str(p), kind, array_path, _layout_of_zarr(p, array), array.shape, array.dtype)


def _describe(path: str, kind: str, array_path: str, channel_axis: int, shape: tuple[int, ...],
              dtype: np.dtype) -> Source:
    if len(shape) != 3:
        raise LpdaskError(f"{path}: image of shape {shape} is not (y, x, c) or (c, y, x)")
    channels = shape[channel_axis]
    height, width = [n for axis, n in enumerate(shape) if axis != channel_axis]
    if channels != 3:
        raise LpdaskError(f"{path}: {channels} channels; only RGB (3 channels) is supported")
    try:
        dtype = check_dtype(dtype)
    except LpdaskError as exc:
        raise LpdaskError(f"{path}: {exc}") from None
    return Source(path, kind, array_path, int(height), int(width), int(channels), dtype, channel_axis)


def _check_tiff(path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise LpdaskError(f"cannot read input {path}: {exc.strerror}") from None
    if head not in _TIFF_MAGIC:
        raise LpdaskError(f"{path} is neither a TIFF file nor a Zarr folder")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise LpdaskError(f"{path}: TIFF file holds no image")
    except tifffile.TiffFileError as exc:
        raise LpdaskError(f"{path}: unreadable TIFF ({exc})") from None


def _layout_from_axes(path: Path, axes: str) -> int:
    if axes in ("YXS", "YXC"):
        return 2
    if axes in ("SYX", "CYX"):
        return 0
    raise LpdaskError(f"{path}: TIFF axes {axes!r} are not supported (need YXS or SYX)")


def _open_zarr(path: Path) -> tuple[zarr.Array, str]:
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for a folder that is not a store
        raise LpdaskError(f"{path} is not a Zarr array or group ({type(exc).__name__})") from None
    if isinstance(node, zarr.Array):
        return node, ""
    ome = node.attrs.get("ome", node.attrs)
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if multiscales:
        array_path = multiscales[0]["datasets"][0]["path"]
    else:
        arrays = sorted(name for name, _ in node.arrays())
        if len(arrays) != 1:
            raise LpdaskError(f"{path}: Zarr group with arrays {arrays}; point at one array")
        array_path = arrays[0]
    return node[array_path], array_path


def _layout_of_zarr(path: Path, array: zarr.Array) -> int:
    if array.ndim != 3:
        raise LpdaskError(f"{path}: image of shape {array.shape} is not (y, x, c) or (c, y, x)")
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    lowered = [str(n).lower() for n in names or ()]
    if lowered[1:] == ["y", "x"] and len(lowered) == 3:
        return 0
    if lowered[:2] == ["y", "x"] and len(lowered) == 3:
        return 2
    shape = array.shape
    if len(shape) == 3:
        if shape[-1] <= 4:
            return 2
        if shape[0] <= 4:
            return 0
    raise LpdaskError(f"{path}: cannot tell the channel axis of shape {shape}; use (y, x, c) or (c, y, x)")


_lock = threading.Lock()
_open: dict[Source, tuple[Any, Any]] = {}


def _opened(source: Source) -> Any:
    """The source's array, opened once per process and kept open."""
    with _lock:
        entry = _open.get(source)
        if entry is None:
            if source.kind == "tiff":
                tif = tifffile.TiffFile(source.path)  # stays open: the store reads through it
                entry = (zarr.open(tif.series[0].aszarr(level=0), mode="r"), tif)
            else:
                node = zarr.open(source.path, mode="r")
                entry = (node[source.array_path] if source.array_path else node, None)
            _open[source] = entry
        return entry[0]
