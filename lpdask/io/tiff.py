"""Write a stored pyramid as a tiled, pyramidal BigTIFF (OME-TIFF or plain/GeoTIFF), tile by tile.

Pixels go from the Zarr levels to ``tifffile.TiffWriter.write`` through a generator: tifffile takes
the tiles of each page in row-major order, pages (and separately stored samples) in C order of the
leading axes, each tile shaped ``(tile, tile, samples)``; it zero-pads the partial tiles at the
right and bottom edges. Only one piece of a tile row (at most ``PIECE_BYTES``) is read at a time.

Layout:

- ``rgb`` / ``rgba``: contiguous samples (YXS pages), ``rgba`` with an unassociated alpha sample.
- ``minisblack``: one page per channel and t/z plane, as OME-TIFF stores CYX/TCZYX. For a plain
  GeoTIFF (a plain layout with georeferencing) the channels are instead the separately stored
  samples of one page (PlanarConfiguration 2), so that GDAL sees them as bands.
- Levels 1.. are SubIFDs of the level-0 pages (NewSubfileType 1), the OME-TIFF/Bio-Formats/QuPath
  convention, for GeoTIFF too: GDAL >= 3.2 (OSGeo/gdal#1690) takes reduced-resolution SubIFDs of
  the first page as its overviews. Checked with rasterio 1.4.4 / GDAL 3.10.3: ``overviews(1)``
  lists them and ``rasterio.open(path, overview_level=k)`` reads their pixels exactly, the same as
  for COG-like overview pages in the main IFD chain. Readers that walk only the main chain
  (older GDAL, some COG tools) see no overviews.
- ``layout="pages"`` puts levels 1.. in the main IFD chain instead, as GDAL writes overviews,
  with the channels as contiguous samples of one page (pixel interleaved, as GDAL lays out a COG):
  the source :mod:`lpdask.io.cog` makes a Cloud Optimized GeoTIFF of.

OME-XML gets axes, physical sizes with OME unit symbols (axes with unknown units get none), time
increment, channel names and colours. Georeferencing tags go on the first level-0 page in either
mode; the GDAL layout above applies only to plain output.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import tifffile

from .metadata import ImageMetadata

if TYPE_CHECKING:
    import zarr

PIECE_BYTES = 32 << 20
"""The most bytes read from a level at once: a tile row, or a piece of it for very wide images."""

_PREDICTABLE = {"zlib", "deflate", "adobe_deflate", "lzw", "zstd", "lzma"}

_PREFIXES = {
    "yotta": ("Y", 1e24), "zetta": ("Z", 1e21), "exa": ("E", 1e18), "peta": ("P", 1e15),
    "tera": ("T", 1e12), "giga": ("G", 1e9), "mega": ("M", 1e6), "kilo": ("k", 1e3),
    "hecto": ("h", 1e2), "deca": ("da", 1e1), "": ("", 1.0), "deci": ("d", 1e-1),
    "centi": ("c", 1e-2), "milli": ("m", 1e-3), "micro": ("µ", 1e-6), "nano": ("n", 1e-9),
    "pico": ("p", 1e-12), "femto": ("f", 1e-15), "atto": ("a", 1e-18), "zepto": ("z", 1e-21),
    "yocto": ("y", 1e-24),
}


def _unit_table(base: str, symbol: str, others: dict[str, tuple[str, float]]) -> dict[str, tuple[str, float]]:
    """UDUNITS names (and OME symbols) -> (OME symbol, size in SI base units)."""
    table = {prefix + base: (p + symbol, f) for prefix, (p, f) in _PREFIXES.items()} | others
    return table | {sym: (sym, f) for sym, f in table.values()}


LENGTH_UNITS = _unit_table("meter", "m", {
    "angstrom": ("Å", 1e-10), "inch": ("in", 0.0254), "foot": ("ft", 0.3048),
    "yard": ("yd", 0.9144), "mile": ("mi", 1609.344), "parsec": ("pc", 3.0856775814913673e16)})
TIME_UNITS = _unit_table("second", "s", {"minute": ("min", 60.0), "hour": ("h", 3600.0), "day": ("d", 86400.0)})


def write_tiff(path: str | os.PathLike[str], levels: Sequence[zarr.Array], meta: ImageMetadata, *,
               layout: Literal["ome", "subifds", "pages"], tile: int = 256,
               compression: str | tuple[str, int] = "zlib", on_tile: Callable[[], None] | None = None,
               software: str | None = None) -> None:
    """Write the pyramid ``levels`` (axes ``meta.axis_names``, level 0 first) to a tiled BigTIFF.

    ``meta`` describes level 0. ``layout``: an OME-TIFF, or a plain TIFF, levels 1.. as SubIFDs of
    level 0, or (``pages``) as pages after it in the main IFD chain (single-plane output only, no
    JSON description). ``on_tile`` is called once per tile as it is handed to tifffile.
    ``software`` goes into the first page's Software tag. ``compression``: a codec, or (codec,
    level) (the codec's default level otherwise).
    """
    ome, pages = layout == "ome", layout == "pages"
    grid = _Layout.of(meta, levels, ome=ome, tile=tile, gdal=pages)
    if pages and math.prod(levels[0].shape[meta.axis_names.index(a)] for a in "tz" if a in meta.axis_names) > 1:
        raise ValueError("overviews as pages of the main IFD chain need one plane (no t or z)")
    codec, codec_level = (compression, None) if isinstance(compression, str) else compression
    codec = None if codec.lower() == "none" else codec
    integer = np.dtype(levels[0].dtype).kind in "ui"
    predictor = bool(codec) and integer and codec.lower() in _PREDICTABLE
    extrasamples = ("unassalpha",) if meta.photometric == "rgba" else None
    geotags = meta.geotiff.extratags() if meta.geotiff is not None else None
    metadata: dict[str, Any] = {"axes": grid.tiff_axes}
    if ome:
        metadata |= ome_metadata(meta, grid.channels)
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as writer:
        for k, level in enumerate(levels):
            shrink = levels[0].shape[-1] / level.shape[-1], levels[0].shape[-2] / level.shape[-2]
            writer.write(
                _tiles(level, grid, tile, on_tile),
                shape=grid.stored_shape(level),
                dtype=level.dtype,
                tile=(tile, tile),
                photometric="minisblack" if meta.photometric == "minisblack" else "rgb",
                planarconfig=grid.planarconfig,
                extrasamples=extrasamples,
                compression=codec,
                compressionargs={"level": codec_level} if codec and codec_level is not None else None,
                predictor=predictor or None,
                subifds=len(levels) - 1 if k == 0 and not pages else None,
                subfiletype=1 if k else 0,
                metadata=None if pages else metadata if k == 0 or not ome else None,  # tifffile's shaped series need it
                extratags=geotags if k == 0 else None,
                software=software if k == 0 else None,
                **_resolution(meta, shrink),
            )


class _Layout:
    """How the Zarr axes map to TIFF pages: ``order`` is the Zarr axes in stored order
    (contiguous samples last), ``contig`` whether c is the samples of each pixel."""

    def __init__(self, axes: str, order: str, contig: bool, separate: bool, channels: int) -> None:
        self.axes = axes
        self.order = order
        self.contig = contig
        self.planarconfig = "contig" if contig else "separate" if separate else None
        self.channels = channels
        self.tiff_axes = order.upper().replace("C", "S") if contig else order.upper()

    @classmethod
    def of(cls, meta: ImageMetadata, levels: Sequence[zarr.Array], *, ome: bool, tile: int,
           gdal: bool = False) -> _Layout:
        axes = meta.axis_names
        if not levels:
            raise ValueError("no levels to write")
        if tile <= 0 or tile % 16:
            raise ValueError(f"tile {tile} is not a positive multiple of 16")
        if not set("cyx") <= set(axes) or axes != "".join(a for a in "tczyx" if a in axes):
            raise ValueError(f"axes {axes!r} are not a subset of 'tczyx' containing c, y and x")
        first = levels[0]
        for k, level in enumerate(levels):
            if len(level.shape) != len(axes) or level.shape[:-2] != first.shape[:-2]:
                raise ValueError(f"level {k} has shape {level.shape}, level 0 {first.shape} (axes {axes!r})")
            if np.dtype(level.dtype) != np.dtype(first.dtype):
                raise ValueError(f"level {k} has dtype {level.dtype}, level 0 {first.dtype}")
        channels = first.shape[axes.index("c")]
        wanted = {"rgb": 3, "rgba": 4}.get(meta.photometric)
        if wanted is not None and channels != wanted:
            raise ValueError(f"photometric {meta.photometric!r} needs {wanted} channels, not {channels}")
        rest = axes.replace("c", "").replace("yx", "")
        if wanted is not None or (gdal and channels > 1):
            return cls(axes, rest + "yxc", contig=True, separate=False, channels=channels)
        if meta.geotiff is not None and not ome and channels > 1:  # one band: plain pages (tifffile refuses
            return cls(axes, rest + "cyx", contig=False, separate=True, channels=channels)  # one separate sample)
        return cls(axes, axes, contig=False, separate=False, channels=channels)

    def stored_shape(self, level: zarr.Array) -> tuple[int, ...]:
        size = dict(zip(self.axes, level.shape, strict=True))
        return tuple(size[a] for a in self.order)


def _tiles(level: zarr.Array, layout: _Layout, tile: int,
           on_tile: Callable[[], None] | None) -> Iterator[np.ndarray]:
    """The ``(tile, tile, samples)`` tiles of ``level`` in the order tifffile stores them."""
    size = dict(zip(layout.axes, level.shape, strict=True))
    planes = [a for a in layout.order if a not in "yx" and not (a == "c" and layout.contig)]
    samples = size["c"] if layout.contig else 1
    step = _piece_width(level, layout.axes, tile, samples)
    for plane in itertools.product(*(range(size[a]) for a in planes)):
        at = dict(zip(planes, plane, strict=True))
        for y in range(0, size["y"], tile):
            for x in range(0, size["x"], step):
                index = tuple(at[a] if a in at else slice(y, y + tile) if a == "y"
                              else slice(x, x + step) if a == "x" else slice(None) for a in layout.axes)
                piece = np.asarray(level[index])
                piece = np.moveaxis(piece, 0, -1) if layout.contig else piece[..., None]
                for left in range(0, piece.shape[1], tile):
                    if on_tile is not None:
                        on_tile()
                    yield np.ascontiguousarray(piece[:, left:left + tile])


def _piece_width(level: zarr.Array, axes: str, tile: int, samples: int) -> int:
    """Width of one read: whole tiles within ``PIECE_BYTES``, whole Zarr chunks where possible."""
    width = level.shape[-1]
    fits = PIECE_BYTES // (tile * tile * samples * np.dtype(level.dtype).itemsize) * tile
    if fits >= width:
        return width
    step = max(tile, fits)
    chunks = getattr(level, "chunks", None)
    if chunks:
        aligned = math.lcm(tile, chunks[axes.index("x")])
        if aligned <= step:
            step = step // aligned * aligned
    return step


def _resolution(meta: ImageMetadata, shrink: tuple[float, float]) -> dict[str, Any]:
    """TIFF resolution tags (pixels per centimetre) of a level ``shrink`` (x, y) times smaller."""
    per_cm = []
    for name, factor in zip("xy", shrink, strict=True):
        axis = meta.axis(name)
        if axis is None or axis.unit not in LENGTH_UNITS or axis.scale <= 0:
            return {}
        per_cm.append(1e-2 / (axis.scale * factor * LENGTH_UNITS[axis.unit][1]))
    return {"resolution": tuple(per_cm), "resolutionunit": "CENTIMETER"}


def ome_metadata(meta: ImageMetadata, channels: int) -> dict[str, Any]:
    """tifffile's OME ``metadata`` items for ``meta``: physical sizes, time increment, channels."""
    items: dict[str, Any] = {}
    for name, key, units in (("x", "PhysicalSizeX", LENGTH_UNITS), ("y", "PhysicalSizeY", LENGTH_UNITS),
                             ("z", "PhysicalSizeZ", LENGTH_UNITS), ("t", "TimeIncrement", TIME_UNITS)):
        axis = meta.axis(name)
        if axis is not None and axis.unit in units:
            items[key] = axis.scale
            items[key + "Unit"] = units[axis.unit][0]
    if meta.position is not None:  # a region of a larger image: where its corner lies, on every plane
        plane: dict[str, Any] = {}
        for name, value in zip("YX", meta.position, strict=True):
            axis = meta.axis(name.lower())
            if axis is not None and axis.unit in LENGTH_UNITS:
                plane[f"Position{name}"], plane[f"Position{name}Unit"] = value, LENGTH_UNITS[axis.unit][0]
        if plane:
            items["Plane"] = plane
    labels = [c.label for c in meta.channels]
    if meta.photometric != "minisblack":
        # one OME Channel holds all samples of an RGB(A) pixel
        if any(labels):
            items["Channel"] = {"Name": "/".join(label or "" for label in labels)}
        return items
    described = []
    for c in range(channels):
        channel = meta.channels[c] if c < len(meta.channels) else None
        element: dict[str, Any] = {}
        if channel is not None and channel.label:
            element["Name"] = channel.label
        if channel is not None and channel.color and (color := ome_color(channel.color)) is not None:
            element["Color"] = color
        described.append(element)
    if any(described):
        items["Channel"] = described
    return items


def ome_color(rrggbb: str) -> int | None:
    """OME's Color (RGBA as a signed 32-bit int, opaque) of "RRGGBB"; None if it is not one."""
    hex_digits = rrggbb.removeprefix("#")
    if len(hex_digits) != 6 or not all(d in "0123456789abcdefABCDEF" for d in hex_digits):
        return None
    rgba = int(hex_digits, 16) << 8 | 0xFF
    return rgba - (1 << 32) if rgba >= 1 << 31 else rgba
