"""A region of interest: the part of the input whose output is asked for, and the window of the input
that computes it exactly.

An output pixel depends only on the input pixels within the network's reach of it, so the region's
output needs the region plus its reach, read from the real image and clipped only at the image's true
border. lpdask runs the job on that window (its origin on the network's pixel-unshuffle grid, so the
cells are those of the whole image) and keeps the region's part of the output: exactly the crop of
whole-image inference on the whole image.

A region is given as ``X,Y,W,H`` with an optional unit: pixels (``px``, the default; x to the
right, y down from the top-left corner), a length (``um``, ``nm``, ``mm``...: the input's physical
coordinates, its pixel size times the pixel position plus its own offset, as QuPath and napari show
them), or ``map`` (the GeoTIFF's map coordinates: the box from (X, Y) to (X + W, Y + H) in its CRS).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .chunks import Box
from .io.metadata import GeoTiff, ImageMetadata
from .errors import OptionError

UNITS = ("px", "map")
"""Units beside the lengths (:data:`lpdask.io.tiff.LENGTH_UNITS`; ``um`` stands for µm)."""
_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
_SYNTAX = re.compile(rf"{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}([^\d\s,.][^\s,]*)?\s*")


@dataclass(frozen=True)
class Region:
    """A rectangle of the input as asked for: corner ``x``, ``y`` and size ``width``, ``height`` in ``unit``."""

    x: float
    y: float
    width: float
    height: float
    unit: str = "px"

    def __str__(self) -> str:
        return f"{self.x:g},{self.y:g},{self.width:g},{self.height:g}{'' if self.unit == 'px' else self.unit}"

    def to_json(self) -> list[float | str]:
        return [self.x, self.y, self.width, self.height, self.unit]

    def box(self, height: int, width: int, meta: ImageMetadata) -> Box:
        """The input pixels the region covers (rounded outwards), in an image ``height`` x ``width``
        described by ``meta``. A region in pixels must lie inside the image; one in physical or map
        units is clipped to it. Raises :class:`LpdaskError` naming ``--region`` otherwise."""
        if self.unit == "px":
            if any(v != int(v) for v in (self.x, self.y, self.width, self.height)):
                raise self._error("needs whole pixels")
            x0, y0 = int(self.x), int(self.y)
            box = Box(y0, y0 + int(self.height), x0, x0 + int(self.width))
            if box.y0 < 0 or box.x0 < 0 or box.y1 > height or box.x1 > width:
                raise self._error(f"reaches outside the image ({width} x {height} px)")
            return box
        corners = self._corners(meta)
        xs, ys = [c[0] for c in corners], [c[1] for c in corners]
        box = Box(max(0, math.floor(min(ys) + 1e-9)), min(height, math.ceil(max(ys) - 1e-9)),
                  max(0, math.floor(min(xs) + 1e-9)), min(width, math.ceil(max(xs) - 1e-9)))
        if box.y1 <= box.y0 or box.x1 <= box.x0:
            raise self._error(f"lies outside the image ({width} x {height} px, which the input's metadata "
                              f"places at {_extent(height, width, meta, self.unit)})")
        return box

    def _corners(self, meta: ImageMetadata) -> list[tuple[float, float]]:
        """The region's four corners in pixel-edge coordinates (x, y)."""
        points = [(self.x, self.y), (self.x + self.width, self.y), (self.x, self.y + self.height),
                  (self.x + self.width, self.y + self.height)]
        if self.unit == "map":
            inverse = _map_to_pixel(meta.geotiff)
            if inverse is None:
                raise self._error("is in map units, and this input has no geotransform (a GeoTIFF's pixel "
                                  "scale and tiepoint, or its transformation matrix)")
            return [inverse(x, y) for x, y in points]
        to_axis = {name: _length_factor(self.unit, meta.axis(name)) for name in "xy"}
        if None in to_axis.values():
            raise self._error(f"is in {self.unit}, and this input has no pixel size in a length unit; "
                              "give the region in pixels")
        axes = {name: meta.axis(name) for name in "xy"}
        return [tuple((value * to_axis[name] - axes[name].translation) / axes[name].scale  # type: ignore[operator, union-attr]
                      for name, value in zip("xy", point, strict=True)) for point in points]  # type: ignore[misc]

    def _error(self, detail: str) -> OptionError:
        return OptionError("region", self, detail)


def parse_region(value: str | Region | tuple[float, ...] | list[float] | None) -> Region | None:
    """A region from ``X,Y,W,H[unit]`` (or a Region, or a tuple of 4 numbers in pixels and an optional unit)."""
    if value is None or isinstance(value, Region):
        return value
    if isinstance(value, (tuple, list)):
        if len(value) not in (4, 5):
            raise OptionError("region", tuple(value), "needs (x, y, width, height) and optionally a unit")
        text = ",".join(str(v) for v in value[:4]) + (str(value[4]) if len(value) == 5 else "")
    else:
        text = str(value)
    match = _SYNTAX.fullmatch(text)
    if match is None:
        raise OptionError("region", text, "is not X,Y,W,H with an optional unit (px, um, mm, map...), "
                          "e.g. 1024,2048,512,512 or 250,500,128,128um")
    x, y, w, h = (float(match.group(k)) for k in range(1, 5))
    unit = _unit_name(match.group(5) or "px")
    region = Region(x, y, w, h, unit)
    if not (w > 0 and h > 0):
        raise region._error("needs a width and a height above 0")
    if unit not in UNITS and _metres(unit) is None:
        raise region._error(f"has an unknown unit {unit!r} (px, map, or a length: um, nm, mm, m...)")
    return region


def window(box: Box, reach: int, cell: int, height: int, width: int) -> Box:
    """The input window that computes ``box``'s output exactly: ``box`` grown by ``reach`` pixels, clipped
    at the image's border, its origin moved back onto the pixel-unshuffle grid of ``cell`` pixels."""
    grown = box.grow(reach, height, width)
    return Box(grown.y0 // cell * cell, grown.y1, grown.x0 // cell * cell, grown.x1)


def cropped(meta: ImageMetadata, box: Box) -> ImageMetadata:
    """The metadata of the part ``box`` of an image ``meta`` describes: the same pixel sizes, placed
    where the part lies (NGFF translation, GeoTIFF raster positions, OME plane position)."""
    from dataclasses import replace

    axes = tuple(replace(a, translation=a.translation + a.scale * (box.y0 if a.name == "y" else box.x0))
                 if a.name in "yx" else a for a in meta.axes)
    position = meta.position or (0.0, 0.0)
    scales = [meta.axis(name).scale if meta.axis(name) else 1.0 for name in "yx"]  # type: ignore[union-attr]
    position = (position[0] + scales[0] * box.y0, position[1] + scales[1] * box.x0)
    geotiff = meta.geotiff.shifted(box.x0, box.y0) if meta.geotiff else None
    return replace(meta, axes=axes, geotiff=geotiff, position=position)


def _unit_name(unit: str) -> str:
    unit = unit.strip()
    return "µm" if unit in ("um", "micron", "microns", "micrometre") else unit


def _metres(unit: str) -> float | None:
    from .io.tiff import LENGTH_UNITS

    entry = LENGTH_UNITS.get(unit)
    return entry[1] if entry else None


def _length_factor(unit: str, axis: object) -> float | None:
    """What one ``unit`` is in the axis's own unit, or None where the axis has no length unit."""
    given, own = _metres(unit), _metres(getattr(axis, "unit", None) or "")
    return None if given is None or own is None or not getattr(axis, "scale", 0) > 0 else given / own


def _map_to_pixel(geo: GeoTiff | None):  # type: ignore[no-untyped-def]
    """The map (x, y) -> pixel-edge (col, row) conversion of a GeoTIFF's geotransform, or None."""
    if geo is None or geo.identity:
        return None
    half = 0.5 if geo.pixel_is_point else 0.0  # PixelIsPoint tiepoints name pixel centres
    if geo.model_transformation is not None and len(geo.model_transformation) == 16:
        m = geo.model_transformation
        a, b, c, d, e, f = m[0], m[1], m[3], m[4], m[5], m[7]
    elif geo.model_pixel_scale is not None and geo.model_tiepoint is not None and len(geo.model_tiepoint) == 6:
        sx, sy = geo.model_pixel_scale[:2]
        i, j, _, x, y, _ = geo.model_tiepoint
        a, b, c, d, e, f = sx, 0.0, x - sx * i, 0.0, -sy, y + sy * j
    else:
        return None
    det = a * e - b * d
    if det == 0:
        return None

    def inverse(x: float, y: float) -> tuple[float, float]:
        dx, dy = x - c, y - f
        return (e * dx - b * dy) / det + half, (a * dy - d * dx) / det + half

    return inverse


def _extent(height: int, width: int, meta: ImageMetadata, unit: str) -> str:
    """Where the image lies, in the region's unit (for a message)."""
    if unit == "map":
        return "its map coordinates"
    axes = [meta.axis(name) for name in "xy"]
    factors = [_length_factor(unit, axis) for axis in axes]
    if None in factors:
        return "an unknown size"
    x0, y0 = (axis.translation / f for axis, f in zip(axes, factors))  # type: ignore[union-attr, operator]
    x1 = x0 + width * axes[0].scale / factors[0]  # type: ignore[union-attr, operator]
    y1 = y0 + height * axes[1].scale / factors[1]  # type: ignore[union-attr, operator]
    return f"x {x0:g} to {x1:g}, y {y0:g} to {y1:g} {unit}"
