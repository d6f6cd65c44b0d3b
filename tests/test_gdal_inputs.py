"""GeoTIFF inputs written by GDAL (through rasterio), not by tifffile: band- and pixel-interleaved,
RGB and other band counts, JPEG and YCbCr JPEG, palette, DEFLATE / LZW / ZSTD with predictors,
stripped and tiled, BigTIFF, internal overviews and masks. Each file is checked to hold the layout
asked for, then its output against an independent whole-image run (reference.py tolerances) on the
pixels as rasterio reads them; masks are ignored here (only the image must come through)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import tifffile
import zarr
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import Affine, from_origin

from lpdask import upscale
from lpdask.chunks import Box
from lpdask.io.sources import open_source

from .reference import assert_exact, smooth_image, whole_image, whole_image_any

HEIGHT, WIDTH = 24, 40
EPSG = "EPSG:32633"
TRANSFORM = from_origin(500000, 4100000, 10, 10)
TILED16 = {"tiled": True, "blockxsize": 16, "blockysize": 16}
TILED32 = {"tiled": True, "blockxsize": 32, "blockysize": 32}
RUN = {"chunk": 16, "blocks_per_stage": 1}


def bands(count: int, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """(count, h, w) pixels with structure at several scales."""
    images = [smooth_image(HEIGHT, WIDTH, seed + k, np.dtype(dtype).type) for k in range((count + 2) // 3)]
    return np.moveaxis(np.concatenate(images, axis=2), -1, 0)[:count].copy()


def write_gdal(path: Path, data: np.ndarray, *, colormap: dict[int, tuple[int, ...]] | None = None,
               mask: bool = False, overviews: bool = False, **options: Any) -> Path:
    """``data`` (bands, h, w) as a GeoTIFF written by GDAL with creation ``options``; ``mask``: an
    internal mask (GDAL_TIFF_INTERNAL_MASK); ``overviews``: internal 2x and 4x overviews."""
    config = {"GDAL_TIFF_INTERNAL_MASK": "YES"} if mask else {}
    with rasterio.Env(**config), rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                                               count=data.shape[0], dtype=data.dtype, crs=EPSG, transform=TRANSFORM,
                                               **options) as dst:
        dst.write(data)
        if colormap is not None:
            dst.write_colormap(1, colormap)
        if mask:
            dst.write_mask(np.where(data[0] > data[0].mean(), 255, 0).astype(np.uint8))
        if overviews:
            dst.build_overviews([2, 4])
    return path


def gdal_read(path: Path, **kwargs: Any) -> np.ndarray:
    """The pixels as GDAL reads them, (h, w, bands)."""
    with rasterio.open(path, **kwargs) as src:
        return np.moveaxis(src.read(), 0, -1)


def stored(path: Path) -> dict[str, Any]:
    """How the file lays out its first image, as tifffile sees the tags (no pixels read)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return {"planarconfig": int(page.planarconfig), "photometric": int(page.photometric),
                "compression": int(page.compression), "predictor": int(page.predictor),
                "tile": page.tilelength if page.is_tiled else None, "bigtiff": tif.is_bigtiff,
                "bitspersample": page.bitspersample, "extrasamples": tuple(int(e) for e in page.extrasamples),
                "overviews": sum(p.is_reduced and not p.is_mask for p in tif.pages),
                "masks": sum(p.is_mask for p in tif.pages)}


def level0(path: Path) -> np.ndarray:
    return zarr.open_array(str(path / "0"), mode="r")[:]


def assert_geotiff(path: Path, pixel_size: float, width: int) -> None:
    """``path`` is georeferenced as the input, its pixels ``pixel_size`` wide, ``width`` of them."""
    with rasterio.open(path) as out:
        assert out.crs == CRS.from_string(EPSG)
        assert out.width == width
        expected = Affine(pixel_size, 0, TRANSFORM.c, 0, -pixel_size, TRANSFORM.f)
        assert out.transform.almost_equals(expected), (out.transform, expected)


@dataclass(frozen=True)
class Layout:
    count: int
    options: dict[str, Any]
    photometric: str
    """What lpdask must make of it: rgb, rgba or minisblack (each channel a grey image)."""
    layout: dict[str, Any]
    """What GDAL must have written (keys of :func:`stored`), so GDAL ignoring an option fails the test."""
    dtype: str = "uint8"
    extra: dict[str, Any] = field(default_factory=dict)
    """mask / overviews for :func:`write_gdal`."""


CONTIG, SEPARATE = 1, 2
MINISBLACK, RGB, YCBCR, PALETTE = 1, 2, 6, 3
NONE, LZW, JPEG, DEFLATE, ZSTD = 1, 5, 7, 8, 50000
UNASSALPHA = 2

LAYOUTS = [
    pytest.param(Layout(1, {}, "minisblack", {"planarconfig": CONTIG, "compression": NONE, "tile": None}),
                 id="one band, GDAL defaults"),
    pytest.param(Layout(1, {"interleave": "band"}, "minisblack", {"planarconfig": SEPARATE}),
                 id="one band, INTERLEAVE=BAND"),
    pytest.param(Layout(3, {"interleave": "band"}, "rgb", {"planarconfig": SEPARATE, "photometric": RGB}),
                 id="RGB, INTERLEAVE=BAND"),
    pytest.param(Layout(3, {"interleave": "pixel", "compress": "deflate", "predictor": 2}, "rgb",
                        {"planarconfig": CONTIG, "photometric": RGB, "compression": DEFLATE, "predictor": 2}),
                 id="RGB, pixel-interleaved, DEFLATE PREDICTOR=2"),
    pytest.param(Layout(3, {"interleave": "band", "compress": "jpeg"}, "rgb",
                        {"planarconfig": SEPARATE, "photometric": RGB, "compression": JPEG}),
                 id="RGB, INTERLEAVE=BAND, JPEG"),
    pytest.param(Layout(3, {"photometric": "rgb", "compress": "lzw", "predictor": 2, "blockysize": 7}, "rgb",
                        {"planarconfig": CONTIG, "photometric": RGB, "compression": LZW, "predictor": 2,
                         "bitspersample": 16}, dtype="uint16"),
                 id="RGB uint16, LZW PREDICTOR=2, 7-row strips"),
    pytest.param(Layout(2, {"interleave": "band", "compress": "zstd", "predictor": 2, **TILED32}, "minisblack",
                        {"planarconfig": SEPARATE, "photometric": MINISBLACK, "compression": ZSTD, "predictor": 2,
                         "tile": 32}, dtype="uint16"),
                 id="2 bands uint16, INTERLEAVE=BAND, ZSTD PREDICTOR=2, tiled 32"),
    pytest.param(Layout(4, {"photometric": "rgb", "alpha": "yes"}, "rgba",
                        {"planarconfig": CONTIG, "photometric": RGB, "extrasamples": (UNASSALPHA,)}),
                 id="RGBA, alpha band"),
    pytest.param(Layout(1, {"compress": "deflate", "predictor": 3}, "minisblack",
                        {"compression": DEFLATE, "predictor": 3, "bitspersample": 32}, dtype="float32"),
                 id="one band float32, DEFLATE PREDICTOR=3"),
    pytest.param(Layout(3, {"photometric": "rgb", "interleave": "band", "compress": "lzw", "predictor": 3, **TILED16},
                        "rgb", {"planarconfig": SEPARATE, "photometric": RGB, "predictor": 3, "tile": 16},
                        dtype="float32"),
                 id="RGB float32, INTERLEAVE=BAND, LZW PREDICTOR=3, tiled 16"),
    pytest.param(Layout(3, {"bigtiff": "yes", "compress": "zstd", **TILED16}, "rgb",
                        {"bigtiff": True, "compression": ZSTD, "tile": 16}),
                 id="BIGTIFF=YES, tiled 16"),
    pytest.param(Layout(3, TILED16, "rgb", {"tile": 16, "overviews": 2}, extra={"overviews": True}),
                 id="internal overviews"),
    pytest.param(Layout(3, {"compress": "deflate"}, "rgb", {"planarconfig": CONTIG, "masks": 1},
                        extra={"mask": True}),
                 id="internal mask"),
    pytest.param(Layout(3, {"interleave": "band", **TILED16}, "rgb", {"planarconfig": SEPARATE, "overviews": 2,
                                                                       "masks": 3},
                        extra={"mask": True, "overviews": True}),
                 id="internal mask and overviews, INTERLEAVE=BAND"),
]


@pytest.mark.parametrize("case", LAYOUTS)
def test_gdal_layout(small_net, small_checkpoint, tmp_path: Path, case: Layout) -> None:
    src = write_gdal(tmp_path / "in.tif", bands(case.count, case.dtype), **case.options, **case.extra)
    assert stored(src).items() >= case.layout.items(), stored(src)
    source = open_source(src)
    assert (source.channels, source.photometric) == (case.count, case.photometric)
    assert source.meta.geotiff is not None and source.meta.geotiff.model_pixel_scale[:2] == (10.0, 10.0)
    masked = {"nodata": "none"} if case.extra.get("mask") else {}  # masks are tested in test_nodata.py
    upscale(src, tmp_path / "out.zarr", model=small_checkpoint, **RUN, **masked)
    reference = whole_image_any(small_net, gdal_read(src), {"minisblack": "separate"}.get(case.photometric,
                                                                                          case.photometric))
    assert_exact(level0(tmp_path / "out.zarr"), reference)


def test_overview_level(small_net, small_checkpoint, tmp_path: Path) -> None:
    """--level 1 of a GDAL file is its first internal overview, georeferenced at twice the pixel size."""
    src = write_gdal(tmp_path / "in.tif", bands(3), overviews=True, **TILED16)
    source = open_source(src, level=1)
    assert (source.height, source.width) == (HEIGHT // 2, WIDTH // 2)
    assert source.meta.geotiff is not None and source.meta.geotiff.model_pixel_scale[:2] == (20.0, 20.0)
    upscale(src, tmp_path / "out.zarr", model=small_checkpoint, level=1, **RUN)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, gdal_read(src, overview_level=0)))


def gradient(entries: int, alpha: int = 255) -> dict[int, tuple[int, int, int, int]]:
    """A GDAL colour map (RGBA, 0-255) of smoothly changing colours."""
    ramp = np.linspace(0, 1, entries)
    colours = np.stack([ramp, 1 - ramp, 0.5 + 0.5 * np.sin(6 * ramp)]) * 255
    return {k: (*(int(round(v)) for v in colours[:, k]), alpha) for k in range(entries)}


PALETTES = [
    pytest.param(8, "uint8", {"overviews": True}, {"photometric": MINISBLACK, "overviews": 2}, 255,
                 id="colour map written after the pixels (MinIsBlack with a ColorMap), overviews"),
    pytest.param(16, "uint8", {"photometric": "palette", "nbits": 4}, {"photometric": PALETTE, "bitspersample": 4},
                 128, id="PHOTOMETRIC=PALETTE, NBITS=4, colour map with alpha"),
    pytest.param(300, "uint16", {"compress": "lzw", "predictor": 2, **TILED16}, {"bitspersample": 16, "tile": 16},
                 255, id="uint16 indices, LZW PREDICTOR=2, tiled 16"),
]


@pytest.mark.parametrize(("entries", "dtype", "options", "layout", "alpha"), PALETTES)
def test_palette_is_expanded_to_rgb(small_net, small_checkpoint, tmp_path: Path, entries: int, dtype: str,
                                    options: dict[str, Any], layout: dict[str, Any], alpha: int) -> None:
    """A palette image runs as the RGB image its colour map makes, not as grey indices. A TIFF
    ColorMap holds no alpha (GDAL drops a colour map's alpha when it writes one), so it is RGB.
    GDAL's overviews of it hold no ColorMap of their own and use level 0's."""
    indices = (bands(1, "uint16")[0].astype(np.int64) * entries // 65536).astype(dtype)
    src = write_gdal(tmp_path / "in.tif", indices[None], colormap=gradient(entries, alpha), **options)
    assert stored(src).items() >= layout.items(), stored(src)
    with rasterio.open(src) as gdal:
        assert gdal.colorinterp == (ColorInterp.palette,)
        colours, read = gdal.colormap(1), gdal.read(1)
    table = np.array([colours[k] for k in range(entries)], np.uint8)
    assert (table[:, 3] == 255).all()
    expanded = table[read][..., :3]
    assert len(np.unique(read)) > entries // 2 and expanded.std(axis=2).mean() > 10  # varied, not grey
    source = open_source(src)
    assert (source.channels, source.photometric, source.dtype) == (3, "rgb", np.uint8)
    np.testing.assert_array_equal(source.read(Box(0, HEIGHT, 0, WIDTH)), expanded)
    np.testing.assert_array_equal(source.read(Box(3, 9, 5, 30), channels=slice(1, 3)), expanded[3:9, 5:30, 1:])
    if options.get("overviews"):
        half = open_source(src, level=1)
        assert (half.channels, half.photometric) == (3, "rgb")
        np.testing.assert_array_equal(half.read(Box(0, half.height, 0, half.width)),
                                      table[gdal_read(src, overview_level=0)[..., 0]][..., :3])
    upscale(src, tmp_path / "out.tif", model=small_checkpoint, **RUN)
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert_exact(out.read(), whole_image(small_net, expanded))
    assert_geotiff(tmp_path / "out.tif", 10 / small_net.scale, WIDTH * small_net.scale)


@pytest.mark.parametrize("options", [{}, TILED16], ids=["stripped", "tiled 16"])
def test_ycbcr_jpeg(small_net, small_checkpoint, tmp_path: Path, options: dict[str, Any]) -> None:
    """PHOTOMETRIC=YCBCR COMPRESS=JPEG (chroma subsampled 2x2). JPEG leaves chroma upsampling to the
    decoder: GDAL in rasterio's wheels decodes with IJG libjpeg 9 (DCT-scaled chroma), lpdask
    through imagecodecs' libjpeg-turbo (a triangle filter), so lpdask's read is held to rasterio's
    within 1 level of luma (Y) everywhere and a mean RGB difference under 2 levels, and the output
    to the reference of lpdask's own read."""
    src = write_gdal(tmp_path / "in.tif", bands(3), photometric="ycbcr", compress="jpeg", **options)
    assert stored(src).items() >= {"photometric": YCBCR, "compression": JPEG, "planarconfig": CONTIG}.items()
    source = open_source(src)
    assert (source.channels, source.photometric) == (3, "rgb")
    read, gdal = source.read(Box(0, HEIGHT, 0, WIDTH)).astype(np.float64), gdal_read(src).astype(np.float64)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(read @ luma - gdal @ luma).max() <= 1.0
    assert np.abs(read - gdal).mean() < 2.0
    upscale(src, tmp_path / "out.zarr", model=small_checkpoint, **RUN)
    assert_exact(level0(tmp_path / "out.zarr"), whole_image(small_net, source.read(Box(0, HEIGHT, 0, WIDTH))))


def lpdask_command(cwd: Path, *arguments: str) -> None:
    """The real command in a subprocess: it must succeed and print nothing but its one-line notes."""
    done = subprocess.run([sys.executable, "-m", "lpdask", *arguments], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_one_band_geotiff_to_tif(small_net, small_checkpoint, tmp_path: Path) -> None:
    """Regression: a one-band GeoTIFF with GDAL's defaults, upscaled to a .tif (and an OME-Zarr
    result exported to a .tif), stopped with "<PLANARCONFIG.SEPARATE: 2> does not match storedshape"."""
    image = bands(1)
    write_gdal(tmp_path / "in.tif", image)
    reference = whole_image_any(small_net, gdal_read(tmp_path / "in.tif"))
    lpdask_command(tmp_path, "upscale", "in.tif", "out.tif", "--model", str(small_checkpoint), "--chunk", "16", "-q")
    upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_checkpoint, **RUN)
    lpdask_command(tmp_path, "export", "out.zarr", "exported.tif")
    for name in ("out.tif", "exported.tif"):
        with rasterio.open(tmp_path / name) as out:
            assert out.count == 1
            assert_exact(out.read(), reference)
        assert_geotiff(tmp_path / name, 10 / small_net.scale, WIDTH * small_net.scale)
