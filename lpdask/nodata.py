"""Nodata: which input pixels hold no data, how they are filled before the network, and how the
output marks them.

Where the mask comes from: the input's nodata value (GDAL's nodata tag, or ``--nodata``), a pixel
of a band equal to it holding no data in that band; a TIFF internal mask (GDAL's
``GDAL_TIFF_INTERNAL_MASK``), one for all bands; or an RGBA image's alpha, the colour under alpha 0
being missing (the output's alpha marks it: exactly the input's, upscaled, with ``--alpha nearest``).

The fill: a network sees every pixel, so a hard edge between the data and a constant fill (a black
border) rings into the valid pixels next to it. Pixels under the mask instead continue the valid
area smoothly: in each of :data:`FILL_RADIUS` steps, every masked pixel next to a filled or valid
one takes the mean of those neighbours (3 x 3), so the fill grows inward one pixel a step; what is
still masked after that takes 0. A filled value depends only on the pixels within
:data:`FILL_RADIUS` of it (outside the image counts as masked), so a chunk reads that much more on
each side and the fill is the same however the image is cut: the result stays that of whole-image
inference on the filled image. Valid pixels farther than the network's reach from any masked pixel
are exactly what they would be without the mask.

The output: the input mask upscaled by nearest neighbour; where it holds no data the output takes
the nodata value (for an input with a mask and no value: 0, or NaN for floats), and a valid output
pixel that happens to equal it is moved one level off it (as GDAL's warper does), so the output's
mask is exactly the upscaled input mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tifffile

from .chunks import Box
from .errors import LpdaskError
from .io.locations import Location
from .io.sources import Source, open_tiff, read_tiff_page

FILL_RADIUS = 16
"""Steps of the fill: how far into a masked area it continues the valid pixels."""


@dataclass(frozen=True)
class Nodata:
    """What marks the input's missing pixels: a ``value`` (per band), a TIFF internal ``mask_page``
    (the index of the mask's page in the file), or both; and the ``output`` value the output's
    missing pixels take: ``value``, or for a mask alone 0 (integers) or NaN (floats)."""

    value: float | None = None
    mask_page: int | None = None
    output: float = 0.0
    alpha: int | None = None
    """The channel of an RGBA input's alpha: the colour under alpha 0 is missing (filled only; the
    output's alpha, upscaled, marks it)."""

    @property
    def marks(self) -> bool:
        """Whether the output's missing pixels take :attr:`output` (not for an alpha alone)."""
        return self.value is not None or self.mask_page is not None

    def to_json(self) -> dict[str, object]:
        return {"value": _json_number(self.value), "mask_page": self.mask_page, "output": _json_number(self.output),
                "alpha": self.alpha}


def _json_number(value: float | None) -> float | str | None:
    return None if value is None else "nan" if math.isnan(value) else value


def parse_nodata(text: str | float | None) -> float | None:
    """A nodata value as GDAL writes it in its tag or a user gives it (``nan``, ``-9999``, ``0``)."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text)
    cleaned = text.strip().strip("\x00").strip()
    if not cleaned:
        return None
    return float(cleaned)


def gdal_number(value: float) -> str:
    """``value`` as GDAL writes it in its nodata tag."""
    if math.isnan(value):
        return "nan"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def valid_of(pixels: np.ndarray, value: float | None, mask: np.ndarray | None) -> np.ndarray | None:
    """Which of ``pixels`` (h, w, c) hold data, as (h, w, c) booleans; None when all do."""
    valid = None
    if value is not None and representable(value, pixels.dtype):
        valid = ~np.isnan(pixels) if math.isnan(value) else pixels != np.asarray(value).astype(pixels.dtype)
    if mask is not None:
        valid = mask[..., None] if valid is None else valid & mask[..., None]
    if valid is None:
        return None
    return np.broadcast_to(valid, pixels.shape)


def representable(value: float, dtype: np.dtype) -> bool:
    """Whether a pixel of ``dtype`` can hold ``value`` (GDAL allows a nodata no pixel can equal)."""
    if np.dtype(dtype).kind == "f":
        return True
    info = np.iinfo(dtype)
    return not math.isnan(value) and float(value).is_integer() and info.min <= value <= info.max


def nodata_of(source: Source, option: str | float | None = None, photometric: str | None = None) -> Nodata | None:
    """The input's nodata: ``option`` None reads it from the file (GDAL's nodata tag, a TIFF
    internal mask, the alpha of an image run as ``photometric`` "rgba"), "none" turns it off, a
    number overrides the value."""
    if isinstance(option, str) and option.strip().lower() == "none":
        return None
    if option is not None:
        try:
            value = parse_nodata(option)
        except ValueError:
            raise LpdaskError(f"--nodata {option!r} is neither a number, nan nor none") from None
    else:
        geotiff = None if source.palette else source.meta.geotiff  # a palette's nodata is an index, not a colour
        try:
            value = parse_nodata(geotiff.gdal_nodata) if geotiff is not None else None
        except ValueError:
            value = None  # a tag GDAL itself would not read
    if value is not None and not representable(value, source.dtype):
        if option is not None:
            raise LpdaskError(f"--nodata {option!r} cannot be a pixel of this {source.dtype} image")
        value = None
    page = _mask_page_of(source) if source.kind == "tiff" else None
    alpha = 3 if photometric == "rgba" else None
    if value is None and page is None and alpha is None:
        return None
    output = value if value is not None else math.nan if source.dtype.kind == "f" else 0.0
    return Nodata(value, page, output, alpha)


def _mask_page_of(source: Source) -> int | None:
    with open_tiff(Location.of(source.path)) as tif:
        series = tif.series[source.series]
        return mask_page(tif, series.levels[source.level].keyframe)


def fill(pixels: np.ndarray, valid: np.ndarray, radius: int = FILL_RADIUS) -> np.ndarray:
    """``pixels`` (h, w, c) as float32 with the invalid ones filled (see the module's docstring);
    outside the array counts as invalid."""
    values = np.where(valid, pixels.astype(np.float32), np.float32(0))
    known = valid.astype(np.float32)
    for _ in range(radius):
        missing = known == 0
        if not missing.any():
            break
        weight = _box3(known)
        total = _box3(values * known)
        grow = missing & (weight > 0)
        if not grow.any():
            break
        values = np.where(grow, total / np.where(grow, weight, 1), values)
        known = np.where(grow, np.float32(1), known)
    return values


def _box3(a: np.ndarray) -> np.ndarray:
    """Sums over each pixel's 3 x 3 neighbourhood (zeros outside) of (h, w, c)."""
    padded = np.pad(a, ((1, 1), (1, 1), (0, 0)))
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


def read_mask(source: Source, page: int, box: Box) -> np.ndarray:
    """The TIFF internal mask at page ``page`` of ``source``'s file over ``box``, as (h, w) booleans."""
    return read_tiff_page(source, page, box).astype(bool)


def mask_page(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> int | None:
    """The index of the internal mask GDAL writes for ``page`` (the next page, of file type mask and
    the same size), if there is one."""
    index = page.index
    if tif.is_ome or not isinstance(index, int) or index + 1 >= len(tif.pages):
        return None
    tif.pages.useframes = False
    following = tif.pages[index + 1]
    if (isinstance(following, tifffile.TiffPage) and following.subfiletype & tifffile.FILETYPE.MASK
            and following.photometric == tifffile.PHOTOMETRIC.MASK and following.shape[:2] == page.shape[:2]):
        return index + 1
    return None


def upscaled_mask(valid: np.ndarray, box: Box, scale: int, read_box: Box) -> np.ndarray:
    """The nearest-upscaled validity (h, w, c) of output ``box`` from the input's validity over
    ``read_box`` (the input pixels under ``box``: see :func:`input_box`)."""
    rows = np.arange(box.y0, box.y1) // scale - read_box.y0
    cols = np.arange(box.x0, box.x1) // scale - read_box.x0
    return valid[np.ix_(rows, cols)]


def input_box(box: Box, scale: int) -> Box:
    """The input pixels under output ``box``."""
    return Box(box.y0 // scale, -(-box.y1 // scale), box.x0 // scale, -(-box.x1 // scale))


def mark(pixels: np.ndarray, valid: np.ndarray, value: float) -> np.ndarray:
    """Output ``pixels`` (c, h, w) with the nodata ``value`` where ``valid`` (h, w, c) is False, and
    valid pixels equal to it moved one level off it; in place where possible."""
    holds = np.moveaxis(valid, -1, 0)
    if pixels.dtype.kind == "f":
        if not math.isnan(value):
            clash = holds & (pixels == value)
            pixels[clash] = np.nextafter(pixels[clash], np.asarray(np.inf, pixels.dtype))
        pixels[~holds] = value
        return pixels
    info = np.iinfo(pixels.dtype)
    if not (float(value).is_integer() and info.min <= value <= info.max):
        return pixels
    level = pixels.dtype.type(int(value))
    clash = holds & (pixels == level)
    pixels[clash] = level + 1 if level < info.max else level - 1
    pixels[~holds] = level
    return pixels


__all__ = ["FILL_RADIUS", "Nodata", "fill", "gdal_number", "input_box", "mark", "mask_page", "nodata_of", "parse_nodata",
           "read_mask", "representable", "upscaled_mask", "valid_of"]
