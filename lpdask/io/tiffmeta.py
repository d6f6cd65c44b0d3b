"""An input TIFF's metadata as :class:`ImageMetadata`: physical pixel sizes, channels, georeferencing.

Sources, first found wins for pixel sizes: OME-XML, ImageJ hyperstack description, Aperio SVS
``MPP``, ResolutionUnit centimeter / millimeter / micrometer (NDPI and DNG style). An inch
resolution is a print density (72 dpi by default), not a physical pixel size, and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from xml.etree import ElementTree

import numpy as np
import tifffile

from ..errors import LpdaskError
from .metadata import Axis, Channel, GeoTiff, ImageMetadata, Photometric

LENGTH_UNITS: dict[str, str] = {
    "Ym": "yottameter", "Zm": "zettameter", "Em": "exameter", "Pm": "petameter", "Tm": "terameter",
    "Gm": "gigameter", "Mm": "megameter", "km": "kilometer", "hm": "hectometer", "m": "meter",
    "dm": "decimeter", "cm": "centimeter", "mm": "millimeter", "µm": "micrometer", "μm": "micrometer",
    "um": "micrometer", "nm": "nanometer", "pm": "picometer", "fm": "femtometer", "am": "attometer",
    "zm": "zeptometer", "ym": "yoctometer", "Å": "angstrom", "in": "inch", "ft": "foot", "yd": "yard",
    "mi": "mile", "pc": "parsec",
}
"""OME UnitsLength symbols (and ImageJ's spellings) to the UDUNITS names OME-NGFF allows."""

TIME_UNITS: dict[str, str] = {
    "Ys": "yottasecond", "Zs": "zettasecond", "Es": "exasecond", "Ps": "petasecond", "Ts": "terasecond",
    "Gs": "gigasecond", "Ms": "megasecond", "ks": "kilosecond", "hs": "hectosecond", "s": "second",
    "ds": "decisecond", "cs": "centisecond", "ms": "millisecond", "µs": "microsecond", "μs": "microsecond",
    "us": "microsecond", "ns": "nanosecond", "ps": "picosecond", "fs": "femtosecond", "as": "attosecond",
    "zs": "zeptosecond", "ys": "yoctosecond", "min": "minute", "h": "hour", "d": "day",
}
"""OME UnitsTime symbols to UDUNITS names."""

# Spelled-out names (ImageJ writes "micron", "sec"), matched case-insensitively.
_LENGTH_NAMES = {**{name: name for name in LENGTH_UNITS.values()}, "micron": "micrometer",
                 "microns": "micrometer", "angstroms": "angstrom", "inches": "inch", "feet": "foot"}
_TIME_NAMES = {**{name: name for name in TIME_UNITS.values()}, "sec": "second", "msec": "millisecond",
               "hr": "hour", "hrs": "hour"}

GEOTIFF_CODES = {code: name for name, (code, _) in GeoTiff.TAGS.items()}

_DROPPED_TAGS = {
    315: "Artist", 700: "XMP", 33432: "Copyright", 33723: "IPTC", 34377: "Photoshop",
    34665: "EXIF", 34675: "ICC profile", 34853: "GPS", 37724: "ImageSourceData",
}
_NDPI_STRUCTURE = {65324, 65325, 65420, 65426, 65432}  # high bytes, file format, MCU starts
_OME_PIXELS_KEPT = {"Channel", "TiffData", "BinData", "MetadataOnly"}
_OME_CHANNEL_KEPT = {"@ID", "@Name", "@Color", "@SamplesPerPixel"}
_IMAGEJ_KEPT = {"ImageJ", "images", "channels", "slices", "frames", "hyperstack", "mode", "loop",
                "spacing", "unit", "yunit", "zunit", "finterval", "fps", "tunit", "xorigin",
                "yorigin", "zorigin", "LUTs"}
_CM_PER_UNIT = {3: 1e4, 4: 1e3, 5: 1.0}  # ResolutionUnit centimeter, millimeter, micrometer in µm


def length_unit(symbol: Any) -> str | None:
    """The UDUNITS name of an OME / ImageJ length unit; None for pixel, reference frame or unknown."""
    return _unit(symbol, LENGTH_UNITS, _LENGTH_NAMES)


def time_unit(symbol: Any) -> str | None:
    """The UDUNITS name of an OME / ImageJ time unit; None when unknown."""
    return _unit(symbol, TIME_UNITS, _TIME_NAMES)


def _unit(symbol: Any, symbols: dict[str, str], names: dict[str, str]) -> str | None:
    if not isinstance(symbol, str):
        return None
    text = symbol.strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return symbols.get(text) or names.get(text.lower())


def ome_color(value: Any) -> str | None:
    """OME's signed 32-bit RGBA integer as "RRGGBB"."""
    try:
        rgba = int(value) & 0xFFFFFFFF
    except (TypeError, ValueError):
        return None
    return f"{rgba >> 8:06X}"


@dataclass
class _Found:
    """What one metadata source says about level 0: per axis (unit, size, origin) and channels."""

    sizes: dict[str, tuple[str | None, float]] = field(default_factory=dict)
    origins: dict[str, float] = field(default_factory=dict)
    channels: list[Channel] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def tiff_metadata(tif: tifffile.TiffFile, series: int, level: int, axes: str, channels: int,
                  photometric: Photometric, palette: bool = False) -> ImageMetadata:
    """The metadata of level ``level`` of series ``series``, with output axes ``axes``; ``palette``:
    the pixels are expanded through the colour map, so GDAL's band colour interpretations no longer
    apply."""
    chosen = tif.series[series]
    base, image = chosen.levels[0], chosen.levels[level]
    page = base.keyframe
    if tif.is_ome and tif.ome_metadata:
        found = _from_ome(tif.ome_metadata, series, len(tif.series), chosen.name)
        if "x" not in found.sizes and "y" not in found.sizes:
            found.sizes.update(_from_tags(page).sizes)
    elif tif.is_imagej and tif.imagej_metadata is not None:
        found = _from_imagej(tif.imagej_metadata, page, channels)
    else:
        found = _from_tags(page)
    found.dropped += _dropped_tags(tif, page) + _other_series(tif, series)
    ratios = {"y": _extent(base, "Y") / _extent(image, "Y"), "x": _extent(base, "X") / _extent(image, "X")}
    out_axes = tuple(_axis(name, found, ratios.get(name, 1.0)) for name in axes)
    geotiff = _geotiff(base, image, level)
    if palette and geotiff is not None and geotiff.gdal_metadata is not None:
        geotiff = replace(geotiff, gdal_metadata=_without_colour_interpretation(geotiff.gdal_metadata))
    return ImageMetadata(axes=out_axes, channels=_fitted(found.channels, channels), photometric=photometric,
                         geotiff=geotiff, dropped=tuple(dict.fromkeys(found.dropped)))


def _axis(name: str, found: _Found, ratio: float) -> Axis:
    unit, size = found.sizes.get(name, (None, 1.0))
    return Axis(name, unit, size * ratio, found.origins.get(name, 0.0))


def _extent(image: tifffile.TiffPageSeries, axis: str) -> int:
    return image.shape[image.axes.index(axis)] if axis in image.axes else 1


def _fitted(found: list[Channel], count: int) -> tuple[Channel, ...]:
    """One entry per channel: the found ones, blank ones where nothing was found."""
    return tuple((found + [Channel()] * count)[:count])


# ---- OME-XML ---------------------------------------------------------------------------------


def _from_ome(xml: str, series: int, series_count: int, series_name: str) -> _Found:
    try:
        tree = tifffile.xml2dict(xml, prefix=("@", ""), sep="").get("OME", {})
    except (SyntaxError, ValueError):  # ElementTree.ParseError is a SyntaxError
        return _Found(dropped=["OME-XML (unreadable)"])
    images = _listed(tree.get("Image"))
    found = _Found(dropped=[f"OME {key}" for key, value in tree.items()
                            if not key.startswith("@") and key != "Image" and value is not None])
    if not images:
        return found
    image = _pick_image(images, series, series_count, series_name)
    found.dropped += [f"OME {key}" for key, value in image.items()
                      if not key.startswith("@") and key != "Pixels" and value is not None]
    pixels = image.get("Pixels") or {}
    found.dropped += [f"OME {key}" for key, value in pixels.items()
                      if not key.startswith("@") and key not in _OME_PIXELS_KEPT and value is not None]
    for axis in "xyz":
        size = positive(pixels.get(f"@PhysicalSize{axis.upper()}"))
        if size is not None:
            symbol = pixels.get(f"@PhysicalSize{axis.upper()}Unit", "µm")
            found.sizes[axis] = (length_unit(symbol), size)
    increment = positive(pixels.get("@TimeIncrement"))
    if increment is not None:
        found.sizes["t"] = (time_unit(pixels.get("@TimeIncrementUnit", "s")), increment)
    for element in _listed(pixels.get("Channel")):
        found.channels += _ome_channels(element)
        found.dropped += [f"OME Channel {key.lstrip('@')}" for key, value in element.items()
                          if key not in _OME_CHANNEL_KEPT and value is not None]
    return found


def _pick_image(images: list[dict[str, Any]], series: int, series_count: int, name: str) -> dict[str, Any]:
    """The Image element of tifffile's series ``series`` (tifffile skips Images it cannot read)."""
    if len(images) == series_count:
        return images[series]
    named = [image for image in images if name and str(image.get("@Name", "")) == name]
    return named[0] if len(named) == 1 else images[min(series, len(images) - 1)]


def _ome_channels(element: dict[str, Any]) -> list[Channel]:
    """An OME Channel is SamplesPerPixel output channels; only a one-sample channel keeps its name."""
    samples = int(element.get("@SamplesPerPixel") or 1)
    if samples != 1:
        return [Channel()] * samples
    name = element.get("@Name")
    return [Channel(None if name is None else str(name), ome_color(element.get("@Color")))]


def _listed(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [item if isinstance(item, dict) else {} for item in items]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def positive(value: Any) -> float | None:
    """``value`` as a finite positive number (a metadata size), or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and np.isfinite(number) else None


# ---- ImageJ ----------------------------------------------------------------------------------


def _from_imagej(meta: dict[str, Any], page: tifffile.TiffPage, channels: int) -> _Found:
    """ImageJ: x/y pixel size is 1 / resolution in ``unit``; z ``spacing``; t ``finterval``."""
    found = _Found(dropped=[f"ImageJ {key}" for key in meta if key not in _IMAGEJ_KEPT])
    unit = meta.get("unit")
    if length_unit(unit) is not None:
        xres, yres = page.resolution
        sizes = {"x": 1 / xres if xres else None, "y": 1 / yres if yres else None, "z": meta.get("spacing")}
        units = {"x": unit, "y": meta.get("yunit", unit), "z": meta.get("zunit", unit)}
        for axis, size in sizes.items():
            if positive(size) is not None:
                found.sizes[axis] = (length_unit(units[axis]), float(size))
                origin = _number(meta.get(f"{axis}origin"))
                if origin:  # ImageJ calibration: physical = (pixel - origin) * size
                    found.origins[axis] = -origin * float(size)
    interval = positive(meta.get("finterval"))
    if interval is not None:
        found.sizes["t"] = (time_unit(meta.get("tunit", "sec")), interval)
    luts = meta.get("LUTs")
    if luts is not None and len(luts) == channels:
        found.channels = [Channel(color=_lut_color(lut)) for lut in luts]
    elif luts is not None:
        found.dropped.append("ImageJ LUTs")
    return found


def _lut_color(lut: Any) -> str | None:
    """The colour a (3, 256) ImageJ LUT gives the brightest value."""
    table = np.asarray(lut)
    if table.ndim != 2 or table.shape[0] != 3:
        return None
    return "".join(f"{int(v):02X}" for v in table[:, -1])


# ---- Aperio SVS and resolution tags -----------------------------------------------------------


def _svs_properties(description: str) -> dict[str, str]:
    """Aperio's ``key = value`` items after the header, split on "|"."""
    items = (item.split("=", 1) for item in description.split("|")[1:] if "=" in item)
    return {key.strip(): value.strip() for key, value in items}


def _from_svs(description: str) -> _Found:
    mpp = positive(_svs_properties(description).get("MPP"))
    found = _Found(sizes={"x": ("micrometer", mpp), "y": ("micrometer", mpp)} if mpp else {})
    others = [key for key in _svs_properties(description) if key != "MPP"]
    if others:
        found.dropped.append(f"Aperio properties: {', '.join(others)}")
    return found


def _from_tags(page: tifffile.TiffPage) -> _Found:
    """Aperio's MPP, else XResolution / YResolution in pixels per cm, mm or µm as µm per pixel."""
    found = _from_svs(page.description) if page.is_svs else _Found()
    if found.sizes:
        return found
    microns = _CM_PER_UNIT.get(int(page.resolutionunit))
    xres, yres = page.resolution
    if microns is not None and xres > 0 and yres > 0:
        found.sizes = {"x": ("micrometer", microns / xres), "y": ("micrometer", microns / yres)}
    return found


# ---- what is left behind ----------------------------------------------------------------------


def _dropped_tags(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> list[str]:
    dropped = [name for code, name in _DROPPED_TAGS.items() if code in page.tags]
    understood = tif.is_ome or tif.is_imagej or tif.is_svs or tif.is_shaped
    if page.description and not understood:
        dropped.append("ImageDescription")
    if tif.is_ndpi:
        names = [tifffile.TIFF.NDPI_TAGS.get(code, str(code)) for code in page.tags.keys()
                 if 65324 <= code <= 65458 and code not in _NDPI_STRUCTURE]
        if names:
            dropped.append(f"NDPI properties: {', '.join(names)}")
    return dropped


def _other_series(tif: tifffile.TiffFile, series: int) -> list[str]:
    names = [s.name or ("internal mask" if s.keyframe.is_mask else f"series {k}")
             for k, s in enumerate(tif.series) if k != series]
    return [f"other image series: {', '.join(names)}"] if names else []


# ---- GeoTIFF ----------------------------------------------------------------------------------


def _geotiff(base: tifffile.TiffPageSeries, image: tifffile.TiffPageSeries, level: int) -> GeoTiff | None:
    """The level's own GeoTIFF tags; an overview without georeferencing (GDAL gives its overviews
    only GDAL_METADATA and GDAL_NODATA) gets level 0's, scaled down."""
    own = _geotiff_tags(image.keyframe)
    if level == 0 or (own is not None and own.georeferenced):
        return own
    first = _geotiff_tags(base.keyframe)
    if first is None or not first.georeferenced:
        return own
    return first.rescaled(_extent(image, "X") / _extent(base, "X"))  # type: ignore[arg-type]


def _without_colour_interpretation(text: str) -> str | None:
    """GDAL_METADATA without its ``role="colorinterp"`` items; None when nothing else is left."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return text
    for item in root.findall("Item"):
        if item.get("role") == "colorinterp":
            root.remove(item)
    return ElementTree.tostring(root, encoding="unicode") if len(root) else None


def _geotiff_tags(page: tifffile.TiffPage) -> GeoTiff | None:
    values: dict[str, Any] = {}
    for code, name in GEOTIFF_CODES.items():
        if code not in page.tags:
            continue
        value = page.tags[code].value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            values[name] = value
        else:
            cast = int if name == "geo_key_directory" else float
            values[name] = tuple(cast(v) for v in np.ravel(value))
    if not values:
        return None
    try:
        return GeoTiff(**values).checked()
    except ValueError as exc:
        where = page.parent.filehandle.path or page.parent.filename
        raise LpdaskError(f"{where}: malformed GeoTIFF tags: {exc}") from None
