"""Tiled pyramidal BigTIFF output, read back with tifffile and GDAL (rasterio)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import zarr

from lpdask.io import tiff
from lpdask.io.metadata import Axis, Channel, GeoTiff, ImageMetadata
from lpdask.io.tiff import ome_color, write_tiff

SIZES = {"t": 2, "z": 3, "y": 300, "x": 277}


def pyramid(folder: Path, data: np.ndarray, chunk: int = 96, smallest: int = 80) -> list[zarr.Array]:
    """Zarr levels of ``data`` (..., y, x): 2x2 means until height and width are at most ``smallest``."""
    levels = []
    while True:
        array = zarr.create_array(store=str(folder / str(len(levels))), shape=data.shape, dtype=data.dtype,
                                  chunks=(*(1,) * (data.ndim - 2), chunk, chunk))
        array[...] = data
        levels.append(array)
        if max(data.shape[-2:]) <= smallest:
            return levels
        h, w = data.shape[-2] // 2 * 2, data.shape[-1] // 2 * 2
        blocks = data[..., :h, :w].astype(np.float64).reshape(*data.shape[:-2], h // 2, 2, w // 2, 2)
        data = blocks.mean(axis=(-3, -1)).astype(data.dtype)


def image(axes: str, channels: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Random pixels with some structure, so levels differ from each other."""
    rng = np.random.default_rng(seed)
    shape = tuple(channels if a == "c" else SIZES[a] for a in axes)
    top = 1.0 if dtype == "float32" else np.iinfo(dtype).max
    ramp = np.linspace(0, 0.5, shape[-1])
    return ((rng.random(shape) * 0.5 + ramp) * top).astype(dtype)


def metadata(axes: str, photometric: str = "minisblack", channels: tuple[Channel, ...] = (),
             units: dict[str, str | None] | None = None, **kwargs: Any) -> ImageMetadata:
    units = units or {}
    scales = {"t": 1.5, "z": 2.0, "y": 0.25, "x": 0.25}
    return ImageMetadata(axes=tuple(Axis(a, units.get(a), scales.get(a, 1.0)) for a in axes),
                         channels=channels, photometric=photometric, **kwargs)  # type: ignore[arg-type]


def stored(level: zarr.Array, meta: ImageMetadata) -> np.ndarray:
    """What tifffile should give back for ``level``: RGB(A) with samples last."""
    data = level[...]
    return data if meta.photometric == "minisblack" else np.moveaxis(data, meta.axis_names.index("c"), -1)


def tile_count(levels: list[zarr.Array], tile: int) -> int:
    return sum(math.prod(a.shape[:-2]) * math.ceil(a.shape[-2] / tile) * math.ceil(a.shape[-1] / tile)
               for a in levels)


@pytest.mark.parametrize(("axes", "photometric", "channels", "dtype", "ome"), [
    ("cyx", "rgb", 3, "uint8", True),
    ("cyx", "rgba", 4, "uint16", False),
    ("cyx", "minisblack", 5, "uint16", True),
    ("cyx", "minisblack", 5, "uint16", False),
    ("tczyx", "minisblack", 2, "float32", True),
    ("czyx", "minisblack", 3, "float32", True),
    ("tcyx", "rgb", 3, "uint8", False),
])
def test_every_level_round_trips(tmp_path: Path, axes: str, photometric: str, channels: int, dtype: str,
                                 ome: bool) -> None:
    levels = pyramid(tmp_path / "zarr", image(axes, channels, dtype))
    meta = metadata(axes, photometric)
    path = tmp_path / "out.tif"
    ticks = []
    write_tiff(path, levels, meta, layout="ome" if ome else "subifds", tile=128, on_tile=lambda: ticks.append(1))

    samples = channels if photometric != "minisblack" else 1
    planes = math.prod(levels[0].shape[:-2]) // samples
    assert len(ticks) == tile_count(levels, 128) // samples
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        assert tif.is_ome == ome
        assert len(tif.pages) == planes
        for page in tif.pages:  # before reading series, which turns pages into frames
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (128, 128)
            assert len(page.subifds) == len(levels) - 1
            assert page.samplesperpixel == samples
        series = tif.series[0]
        assert len(tif.series) == 1 and len(series.levels) == len(levels) == 3
        if photometric != "minisblack":
            assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
            assert tif.pages[0].extrasamples == ((tifffile.EXTRASAMPLE.UNASSALPHA,) if samples == 4 else ())
        for k, level in enumerate(levels):
            assert series.levels[k].keyframe.is_tiled
            assert series.levels[k].keyframe.is_reduced == (k > 0)
            np.testing.assert_array_equal(series.levels[k].asarray().reshape(stored(level, meta).shape),
                                          stored(level, meta))


def test_reads_stay_within_a_tile_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No read of a 600 x 600 level is larger than a tile row; narrower pieces still write every pixel."""

    class Recording:
        def __init__(self, array: zarr.Array) -> None:
            self.array, self.shape, self.dtype, self.chunks = array, array.shape, array.dtype, array.chunks
            self.reads: list[tuple[int, ...]] = []

        def __getitem__(self, index: Any) -> np.ndarray:
            piece = self.array[index]
            self.reads.append(piece.shape)
            return piece

    data = image("cyx", 3, "uint8")
    data = np.tile(data, (1, 2, 3))[:, :600, :600]
    levels = pyramid(tmp_path / "zarr", data, chunk=128, smallest=300)
    meta = metadata("cyx", "rgb")
    for piece_bytes, widest in ((tiff.PIECE_BYTES, 600), (256 * 256 * 3 * 2, 512)):
        monkeypatch.setattr(tiff, "PIECE_BYTES", piece_bytes)
        recorded = [Recording(a) for a in levels]
        path = tmp_path / f"{piece_bytes}.tif"
        write_tiff(path, recorded, meta, layout="subifds", tile=256)  # type: ignore[arg-type]
        reads = recorded[0].reads
        assert max(r[1] for r in reads) <= 256
        assert max(r[2] for r in reads) == widest
        assert max(math.prod(r) for r in reads) <= 256 * 600 * 3
        with tifffile.TiffFile(path) as tif:
            for k, level in enumerate(levels):
                np.testing.assert_array_equal(tif.series[0].levels[k].asarray(), stored(level, meta))


def test_ome_metadata(tmp_path: Path) -> None:
    levels = pyramid(tmp_path / "zarr", image("tczyx", 2, "uint16"))
    channels = (Channel("DAPI", "0000FF"), Channel("GFP", None))
    units = {"t": "second", "z": "nanometer", "y": "micrometer", "x": "micrometer"}
    path = tmp_path / "out.ome.tif"
    write_tiff(path, levels, metadata("tczyx", channels=channels, units=units), layout="ome", tile=128)
    with tifffile.TiffFile(path) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert (pixels["SizeT"], pixels["SizeC"], pixels["SizeZ"], pixels["SizeY"], pixels["SizeX"]) == (2, 2, 3, 300, 277)
    assert pixels["DimensionOrder"] == "XYZCT"
    assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeXUnit"]) == (0.25, "µm")
    assert (pixels["PhysicalSizeY"], pixels["PhysicalSizeYUnit"]) == (0.25, "µm")
    assert (pixels["PhysicalSizeZ"], pixels["PhysicalSizeZUnit"]) == (2.0, "nm")
    assert (pixels["TimeIncrement"], pixels["TimeIncrementUnit"]) == (1.5, "s")
    assert [c.get("Name") for c in pixels["Channel"]] == ["DAPI", "GFP"]
    assert [c.get("Color") for c in pixels["Channel"]] == [0x0000FFFF, None]


def test_ome_leaves_out_unknown_units(tmp_path: Path) -> None:
    levels = pyramid(tmp_path / "zarr", image("czyx", 3, "uint8"))
    units = {"z": None, "y": "millimeter", "x": "millimeter"}
    meta = metadata("czyx", channels=(Channel("a"), Channel("b"), Channel("c")), units=units)
    write_tiff(tmp_path / "out.ome.tif", levels, meta, layout="ome")
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert (pixels["SizeC"], pixels["SizeZ"], pixels["SizeT"], pixels["DimensionOrder"]) == (3, 3, 1, "XYZCT")
    assert pixels["PhysicalSizeXUnit"] == "mm" and "PhysicalSizeZ" not in pixels and "PhysicalSizeZUnit" not in pixels
    assert [c["Name"] for c in pixels["Channel"]] == ["a", "b", "c"]


def test_rgb_ome_has_one_channel_of_three_samples(tmp_path: Path) -> None:
    levels = pyramid(tmp_path / "zarr", image("cyx", 3, "uint8"))
    meta = metadata("cyx", "rgb", channels=(Channel("R"), Channel("G"), Channel("B")))
    write_tiff(tmp_path / "out.ome.tif", levels, meta, layout="ome")
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert pixels["SizeC"] == 3 and pixels["Interleaved"] is True
    assert pixels["Channel"]["SamplesPerPixel"] == 3 and pixels["Channel"]["Name"] == "R/G/B"
    assert "PhysicalSizeX" not in pixels


def test_resolution_tags(tmp_path: Path) -> None:
    levels = pyramid(tmp_path / "zarr", image("cyx", 1, "uint8"))
    meta = metadata("cyx", units={"y": "micrometer", "x": "micrometer"})
    write_tiff(tmp_path / "out.tif", levels, meta, layout="subifds")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        pages = [level.keyframe for level in tif.series[0].levels]
        assert [p.resolutionunit for p in pages] == [tifffile.RESUNIT.CENTIMETER] * 3
        assert pages[0].resolution == pytest.approx((40000.0, 40000.0))  # 0.25 µm pixels
        assert pages[1].resolution == pytest.approx((40000.0 * 138 / 277, 20000.0))


GEO = GeoTiff(model_pixel_scale=(10.0, 10.0, 0.0), model_tiepoint=(0.0, 0.0, 0.0, 500000.0, 5000000.0, 0.0),
              geo_key_directory=(1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633),
              gdal_nodata="65535")


@pytest.mark.parametrize(("photometric", "channels"), [("minisblack", 3), ("rgb", 3)])
def test_geotiff_for_gdal(tmp_path: Path, photometric: str, channels: int) -> None:
    import rasterio
    from rasterio.transform import Affine

    levels = pyramid(tmp_path / "zarr", image("cyx", channels, "uint16"))
    meta = metadata("cyx", photometric, geotiff=GEO).rescaled(4)
    path = tmp_path / "geo.tif"
    write_tiff(path, levels, meta, layout="subifds", tile=128)
    with rasterio.open(path) as geo:
        assert geo.transform == Affine(2.5, 0.0, 500000.0, 0.0, -2.5, 5000000.0)
        assert geo.crs.to_epsg() == 32633
        assert geo.nodata == 65535
        assert geo.count == channels
        assert geo.overviews(1) == [2, 4]
        np.testing.assert_array_equal(geo.read(), levels[0][...])
    with rasterio.open(path, overview_level=1) as overview:
        np.testing.assert_array_equal(overview.read(), levels[2][...])
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].geotiff_tags
        assert tags["ModelPixelScale"] == [2.5, 2.5, 0.0]
        assert tags["ModelTiepoint"] == [0.0, 0.0, 0.0, 500000.0, 5000000.0, 0.0]
        assert tags["ProjectedCSTypeGeoKey"] == 32633
        assert len(tif.pages) == 1 and len(tif.pages[0].subifds) == 2


def test_rejects_bad_input(tmp_path: Path) -> None:
    levels = pyramid(tmp_path / "zarr", image("cyx", 4, "uint8"))
    with pytest.raises(ValueError, match="needs 3 channels"):
        write_tiff(tmp_path / "a.tif", levels, metadata("cyx", "rgb"), layout="subifds")
    with pytest.raises(ValueError, match="multiple of 16"):
        write_tiff(tmp_path / "b.tif", levels, metadata("cyx"), layout="subifds", tile=100)
    with pytest.raises(ValueError, match="axes"):
        write_tiff(tmp_path / "c.tif", levels, metadata("yxc"), layout="subifds")


def test_ome_color() -> None:
    assert ome_color("FF0000") == -16776961  # 0xFF0000FF as a signed 32-bit int
    assert ome_color("#00ff00") == 0x00FF00FF
    assert ome_color("red") is None
