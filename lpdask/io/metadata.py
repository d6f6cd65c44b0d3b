"""Image metadata carried from input to output: axes with physical sizes, channels, georeferencing.

Everything here is plain, picklable data. Readers live beside it (``tiffmeta``, ``ngff``); the
output writers (``omezarr``, ``tiff``) take an :class:`ImageMetadata` already rescaled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

SPATIAL = ("y", "x")
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
NGFF_ORDER = "tczyx"

Photometric = Literal["rgb", "rgba", "minisblack"]


@dataclass(frozen=True)
class Axis:
    """One output axis: ``name`` is t, c, z, y or x; ``scale`` is the size of one pixel in ``unit``."""

    name: str
    unit: str | None = None
    """A UDUNITS-2 name as OME-NGFF uses it ("micrometer", "second"), or None when unknown."""
    scale: float = 1.0
    translation: float = 0.0

    @property
    def type(self) -> str:
        return AXIS_TYPES[self.name]


@dataclass(frozen=True)
class Channel:
    """A channel's name and display colour ("RRGGBB"), as OME and napari show them."""

    label: str | None = None
    color: str | None = None


@dataclass(frozen=True)
class GeoTiff:
    """GeoTIFF georeferencing tags, values as stored in the file."""

    model_pixel_scale: tuple[float, ...] | None = None  # tag 33550: (sx, sy, sz)
    model_tiepoint: tuple[float, ...] | None = None  # tag 33922: (i, j, k, x, y, z) per tiepoint
    model_transformation: tuple[float, ...] | None = None  # tag 34264: 4x4 row-major
    geo_key_directory: tuple[int, ...] | None = None  # tag 34735
    geo_double_params: tuple[float, ...] | None = None  # tag 34736
    geo_ascii_params: str | None = None  # tag 34737
    gdal_nodata: str | None = None  # tag 42113
    gdal_metadata: str | None = None  # tag 42112

    TAGS = {
        "model_pixel_scale": (33550, "d"),
        "model_tiepoint": (33922, "d"),
        "model_transformation": (34264, "d"),
        "geo_key_directory": (34735, "H"),
        "geo_double_params": (34736, "d"),
        "geo_ascii_params": (34737, "s"),
        "gdal_metadata": (42112, "s"),
        "gdal_nodata": (42113, "s"),
    }

    @property
    def pixel_is_point(self) -> bool:
        """GTRasterTypeGeoKey (1025) = 2: tiepoints refer to pixel centres, not corners."""
        keys = self.geo_key_directory or ()
        for k in range(4, len(keys) - 3, 4):
            if keys[k] == 1025 and keys[k + 1] == 0:
                return keys[k + 3] == 2
        return False

    def rescaled(self, scale: int) -> GeoTiff:
        """Georeferencing of the image upscaled ``scale`` times: world positions stay, pixels shrink.

        A raster position p (in pixel-corner coordinates) becomes p * scale; a pixel-centre
        (PixelIsPoint) position p becomes (p + 0.5) * scale - 0.5.
        """
        def raster(p: float) -> float:
            return (p + 0.5) * scale - 0.5 if self.pixel_is_point else p * scale

        pixel_scale = self.model_pixel_scale
        if pixel_scale is not None:
            pixel_scale = (pixel_scale[0] / scale, pixel_scale[1] / scale, *pixel_scale[2:])
        tiepoint = self.model_tiepoint
        if tiepoint is not None:
            values = list(tiepoint)
            for k in range(0, len(values) - 5, 6):
                values[k], values[k + 1] = raster(values[k]), raster(values[k + 1])
            tiepoint = tuple(values)
        matrix = self.model_transformation
        if matrix is not None and len(matrix) == 16:
            m = list(matrix)
            for row in range(3):  # world = M @ (i, j, k, 1): new (i', j') = raster(i, j)
                a, b = m[4 * row], m[4 * row + 1]
                shift = 0.5 * (scale - 1) if self.pixel_is_point else 0.0
                m[4 * row + 3] -= (a + b) * shift / scale
                m[4 * row], m[4 * row + 1] = a / scale, b / scale
            matrix = tuple(m)
        return replace(self, model_pixel_scale=pixel_scale, model_tiepoint=tiepoint,
                       model_transformation=matrix)

    def extratags(self) -> list[tuple[int, str, int, Any, bool]]:
        """The tags for ``tifffile.TiffWriter.write(extratags=...)``."""
        tags = []
        for name, (code, kind) in self.TAGS.items():
            value = getattr(self, name)
            if value is None:
                continue
            count = 0 if kind == "s" else len(value)
            tags.append((code, kind, count, value, True))
        return tags

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GeoTiff:
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in cls.TAGS}
        return cls(**known)


@dataclass(frozen=True)
class ImageMetadata:
    """What the output carries: its axes in OME-NGFF order (always c, y and x; t and z where the
    input had them), channel names and colours, georeferencing, and what had to be left behind."""

    axes: tuple[Axis, ...] = (Axis("c"), Axis("y"), Axis("x"))
    channels: tuple[Channel, ...] = ()
    photometric: Photometric = "minisblack"
    geotiff: GeoTiff | None = None
    dropped: tuple[str, ...] = field(default=())
    """Human-readable names of input metadata that could not be carried (for the warning)."""

    @property
    def axis_names(self) -> str:
        return "".join(a.name for a in self.axes)

    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)

    def rescaled(self, scale: int) -> ImageMetadata:
        """The metadata of this image upscaled ``scale`` times in y and x."""
        # NGFF places pixel centres: output pixel 0's centre lies (s - 1) / 2s input pixels before input pixel 0's.
        axes = tuple(replace(a, scale=a.scale / scale, translation=a.translation - a.scale * (scale - 1) / (2 * scale))
                     if a.name in SPATIAL else a for a in self.axes)
        geotiff = self.geotiff.rescaled(scale) if self.geotiff else None
        return replace(self, axes=axes, geotiff=geotiff)
