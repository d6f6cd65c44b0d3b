"""Image metadata carried from input to output: axes with physical sizes, channels, georeferencing.

Everything here is plain, picklable data. Readers live beside it (``tiffmeta``, ``ngff``); the
output writers (``omezarr``, ``tiff``) take an :class:`ImageMetadata` already rescaled.
"""

from __future__ import annotations

import math
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


IDENTITY = tuple(float(i == j) for i in range(4) for j in range(4))
RPC_COUNT = 92
"""RPCCoefficientTag: ERR_BIAS, ERR_RAND, LINE_OFF, SAMP_OFF, LAT_OFF, LONG_OFF, HEIGHT_OFF, LINE_SCALE,
SAMP_SCALE, LAT_SCALE, LONG_SCALE, HEIGHT_SCALE, then 4 x 20 polynomial coefficients."""
RPC_RASTER = ((2, 7), (3, 8))
"""(offset, scale) positions of the RPC line and sample, in pixel-centre coordinates."""


def pixel_centre(p: float, scale: float) -> float:
    """A pixel-centre coordinate (pixel 0's centre at 0) in the image upscaled ``scale`` times: the
    same point, (p + 0.5) * scale - 0.5."""
    return (p + 0.5) * scale - 0.5


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
    rpc_coefficients: tuple[float, ...] | None = None  # tag 50844: GDAL's RPCCoefficientTag (RPC_COUNT values)

    TAGS = {
        "model_pixel_scale": (33550, "d"),
        "model_tiepoint": (33922, "d"),
        "model_transformation": (34264, "d"),
        "geo_key_directory": (34735, "H"),
        "geo_double_params": (34736, "d"),
        "geo_ascii_params": (34737, "s"),
        "gdal_metadata": (42112, "s"),
        "gdal_nodata": (42113, "s"),
        "rpc_coefficients": (50844, "d"),
    }

    @property
    def pixel_is_point(self) -> bool:
        """GTRasterTypeGeoKey (1025) = 2: tiepoints refer to pixel centres, not corners."""
        keys = self.geo_key_directory or ()
        for k in range(4, len(keys) - 3, 4):
            if keys[k] == 1025 and keys[k + 1] == 0:
                return keys[k + 3] == 2
        return False

    @property
    def identity(self) -> bool:
        """Only an identity ModelTransformation: GDAL's way of saying "no geotransform" (beside RPCs)."""
        return (self.model_transformation is not None and self.model_pixel_scale is None
                and self.model_tiepoint is None and tuple(self.model_transformation) == IDENTITY)

    @property
    def georeferenced(self) -> bool:
        """Whether the tags place pixels on the ground: a geotransform, tiepoints (GCPs) or RPCs."""
        placed = any(v is not None for v in (self.model_pixel_scale, self.model_tiepoint, self.model_transformation))
        return (placed and not self.identity) or self.rpc_coefficients is not None

    def rescaled(self, scale: float) -> GeoTiff:
        """Georeferencing of the image upscaled ``scale`` times: world positions stay, pixels shrink.

        A raster position p (in pixel-corner coordinates) becomes p * scale; a pixel-centre one
        (PixelIsPoint tiepoints, RPC line and sample offsets) :func:`pixel_centre` (p, scale). An
        identity ModelTransformation stands for none and stays one.
        """
        def raster(p: float) -> float:
            return pixel_centre(p, scale) if self.pixel_is_point else p * scale

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
        if matrix is not None and len(matrix) == 16 and not self.identity:
            m = list(matrix)
            for row in range(3):  # world = M @ (i, j, k, 1) with (i, j) = ((i', j') - raster(0)) / scale
                a, b = m[4 * row], m[4 * row + 1]
                m[4 * row + 3] -= (a + b) * raster(0.0) / scale
                m[4 * row], m[4 * row + 1] = a / scale, b / scale
            matrix = tuple(m)
        rpc = self.rpc_coefficients
        if rpc is not None and len(rpc) == RPC_COUNT:
            r = list(rpc)
            for offset, size in RPC_RASTER:  # line = LINE_SCALE * f(ground) + LINE_OFF, pixel 0's centre at 0
                r[offset], r[size] = pixel_centre(r[offset], scale), r[size] * scale
            rpc = tuple(r)
        return replace(self, model_pixel_scale=pixel_scale, model_tiepoint=tiepoint,
                       model_transformation=matrix, rpc_coefficients=rpc)

    def shifted(self, x0: int, y0: int) -> GeoTiff:
        """Georeferencing of the part of the image from raster column ``x0`` and row ``y0`` on: the
        same world positions, raster positions (tiepoints, the transformation's origin, RPC line and
        sample offsets) moved by the part's corner."""
        tiepoint = self.model_tiepoint
        if tiepoint is not None:
            values = list(tiepoint)
            for k in range(0, len(values) - 5, 6):
                values[k], values[k + 1] = values[k] - x0, values[k + 1] - y0
            tiepoint = tuple(values)
        matrix = self.model_transformation
        if matrix is not None and len(matrix) == 16 and not self.identity:
            m = list(matrix)
            for row in range(3):  # world = M @ (i + x0, j + y0, k, 1)
                m[4 * row + 3] += m[4 * row] * x0 + m[4 * row + 1] * y0
            matrix = tuple(m)
        rpc = self.rpc_coefficients
        if rpc is not None and len(rpc) == RPC_COUNT:
            r = list(rpc)
            r[RPC_RASTER[0][0]] -= y0
            r[RPC_RASTER[1][0]] -= x0
            rpc = tuple(r)
        return replace(self, model_tiepoint=tiepoint, model_transformation=matrix, rpc_coefficients=rpc)

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
        """The tags as :meth:`to_json` wrote them; a value of the wrong kind raises ``ValueError``."""
        known: dict[str, Any] = {}
        for name, value in data.items():
            if name not in cls.TAGS:
                continue
            kind = cls.TAGS[name][1]
            if kind == "s":
                if not isinstance(value, str):
                    raise ValueError(f"{name} is not a string")
                known[name] = value
                continue
            wanted = int if kind == "H" else (int, float)
            if not (isinstance(value, list) and value
                    and all(isinstance(v, wanted) and not isinstance(v, bool) for v in value)):
                raise ValueError(f"{name} is not a list of {'integers' if kind == 'H' else 'numbers'}")
            known[name] = tuple(value)
        return cls(**known).checked()

    def checked(self) -> GeoTiff:
        """This, or ``ValueError`` naming a tag lpdask cannot place pixels with: a ModelPixelScale of
        fewer than 2 values, ModelTiepoints not in sixes, numbers that are not finite."""
        if self.model_pixel_scale is not None and len(self.model_pixel_scale) < 2:
            raise ValueError(f"ModelPixelScale holds {len(self.model_pixel_scale)} value(s), not 3")
        if self.model_tiepoint is not None and (not self.model_tiepoint or len(self.model_tiepoint) % 6):
            raise ValueError(f"ModelTiepoint holds {len(self.model_tiepoint)} values, not a multiple of 6")
        for name in ("model_pixel_scale", "model_tiepoint", "model_transformation", "rpc_coefficients"):
            value = getattr(self, name)
            if value is not None and not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} holds values that are not finite numbers")
        return self


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
    position: tuple[float, float] | None = None
    """Where the image's top-left corner lies (y, x, in the axes' units) when it is a region of a larger
    one (:func:`lpdask.region.cropped`): OME's plane position."""

    @property
    def axis_names(self) -> str:
        return "".join(a.name for a in self.axes)

    def axis(self, name: str) -> Axis | None:
        return next((a for a in self.axes if a.name == name), None)

    def rescaled(self, scale: int) -> ImageMetadata:
        """The metadata of this image upscaled ``scale`` times in y and x."""
        shift = pixel_centre(0.0, scale) / scale  # where output pixel 0's centre is, in input pixels before input 0's
        axes = tuple(replace(a, scale=a.scale / scale, translation=a.translation - a.scale * shift)
                     if a.name in SPATIAL else a for a in self.axes)
        geotiff = self.geotiff.rescaled(scale) if self.geotiff else None
        return replace(self, axes=axes, geotiff=geotiff)
