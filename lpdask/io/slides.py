"""Whole-slide images through OpenSlide (the ``pathology`` extra): MIRAX, Hamamatsu VMS / VMU,
Leica SCN, Ventana BIF, Sakura SVSlide, DICOM, and any other slide OpenSlide opens when forced.

OpenSlide lays a slide out as its vendor means it to be seen (Ventana's overlapping tiles
stitched, Leica's images placed on the slide, MIRAX's scattered tiles) and reads any region of a
pyramid level. A region comes back as RGBA: alpha 0 marks where nothing was scanned. lpdask
composites it over the slide's background colour (``openslide.background-color``, else white), as
OpenSlide's own thumbnails and Deep Zoom tiles do, so every scanned pixel (alpha 255) keeps its
exact value and the empty slide is white, not black.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LpdaskError
from .locations import Location
from .metadata import Axis, Channel, ImageMetadata
from .tiffmeta import positive

SUFFIXES = (".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide", ".dcm")
"""Read through OpenSlide unless another reader is forced. Aperio SVS, NDPI and other TIFF slides
stay with tifffile, which reads them exactly; force OpenSlide for a Philips or Ventana ``.tif``."""
EXTRA = "pip install 'lpdask[pathology]'"


def claims(path: Location) -> bool:
    """Whether OpenSlide reads ``path`` when no reader is forced."""
    return path.name.lower().endswith(SUFFIXES)


def _openslide(path: Location) -> Any:
    try:
        import openslide
    except (ImportError, OSError):  # openslide-python without the OpenSlide library raises OSError
        raise LpdaskError(f"{path}: reading whole-slide images needs OpenSlide: {EXTRA}") from None
    return openslide


def _open(path: Location) -> Any:
    """The open slide, or a one-line error."""
    openslide = _openslide(path)
    if not path.is_local:
        raise LpdaskError(f"{path}: OpenSlide reads local files only; copy the slide to a local disk")
    try:
        return openslide.OpenSlide(str(path.local_path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise LpdaskError(f"{path}: not a slide OpenSlide can read") from None
    except (openslide.OpenSlideError, OSError) as exc:
        raise LpdaskError(f"{path}: unreadable slide ({exc})") from None


def describe(path: Location, series: int, level: int) -> dict[str, Any]:
    """The :class:`~lpdask.io.sources.Source` fields of level ``level`` of the slide at ``path``."""
    slide = _open(path)
    try:
        if series:
            raise LpdaskError(f"{path}: --series {series} does not exist (OpenSlide shows one slide image; "
                              "its label and macro images are not read)")
        if level >= slide.level_count:
            raise LpdaskError(f"{path}: --level {level} does not exist (the slide has {slide.level_count} "
                              f"level{'s' if slide.level_count > 1 else ''})")
        width, height = slide.level_dimensions[level]
        return {"axes": "yxc", "shape": (height, width, 3), "dtype": np.dtype(np.uint8), "photometric": "rgb",
                "meta": _metadata(slide, level)}
    finally:
        slide.close()


def _metadata(slide: Any, level: int) -> ImageMetadata:
    """Pixel sizes from ``openslide.mpp-x`` / ``mpp-y`` (µm at level 0, scaled to the level)."""
    props = slide.properties
    (width0, height0), (width, height) = slide.level_dimensions[0], slide.level_dimensions[level]
    sizes = {"x": (positive(props.get("openslide.mpp-x")), width0 / width),
             "y": (positive(props.get("openslide.mpp-y")), height0 / height)}
    axes = [Axis("c")] + [Axis(name, "micrometer", mpp * ratio) if mpp else Axis(name)
                          for name, (mpp, ratio) in (("y", sizes["y"]), ("x", sizes["x"]))]
    dropped = []
    power = props.get("openslide.objective-power")
    if power:
        dropped.append(f"objective power {power}x")
    groups = sorted({name.split(".", 1)[0] for name in props if not name.startswith("openslide.")})
    if groups:
        dropped.append(f"slide properties ({', '.join(groups)})")
    if slide.associated_images:
        dropped.append(f"associated images: {', '.join(slide.associated_images)}")
    if getattr(slide, "color_profile", None) is not None:
        dropped.append("ICC profile")
    return ImageMetadata(axes=tuple(axes), channels=(Channel(),) * 3, photometric="rgb", dropped=tuple(dropped))


def background(props: Any) -> tuple[int, int, int]:
    """The slide's background colour (``openslide.background-color``, "RRGGBB"), else white."""
    text = str(props.get("openslide.background-color") or "ffffff")
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        return 255, 255, 255


def composite(rgba: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """(h, w, 4) non-premultiplied RGBA, as OpenSlide returns it, over ``color``: (h, w, 3) uint8,
    each value rounded to nearest; alpha 255 keeps a pixel exactly, alpha 0 gives ``color``."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4].astype(np.uint32)
    if alpha.min(initial=255) == 255:
        return np.array(rgb, np.uint8)
    mixed = rgb.astype(np.uint32) * alpha + np.asarray(color, np.uint32) * (255 - alpha)
    return ((mixed + 127) // 255).astype(np.uint8)


@dataclass
class SlideArray:
    """One level of a slide, indexed like a (y, x, c) array; each read is one ``read_region``."""

    slide: Any
    level: int

    def __post_init__(self) -> None:
        width, height = self.slide.level_dimensions[self.level]
        self.shape = (height, width, 3)
        self.downsample = float(self.slide.level_downsamples[self.level])
        self.color = background(self.slide.properties)

    def __getitem__(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        rows, cols, channels = index
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        # read_region takes the corner in level-0 pixels; OpenSlide divides it by the level's downsample.
        corner = (round(x0 * self.downsample), round(y0 * self.downsample))
        region = self.slide.read_region(corner, self.level, (max(x1 - x0, 0), max(y1 - y0, 0)))  # thread-safe
        return composite(np.asarray(region), self.color)[..., channels]


def open_slide(source: Any) -> SlideArray:
    """The array a worker reads ``source`` (kind "openslide") through."""
    return SlideArray(_open(Location.of(source.path)), source.level)
