"""Metadata carried from input to output and rescaled, read back with independent readers
(ome-zarr-models, ome-zarr-py's reader, tifffile's OME and GeoTIFF parsers, rasterio/GDAL); output
pixels compared with an independent whole-image run (tolerances in reference.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr_models.v05 import Image

from lpdask import upscale
from lpdask.errors import MetadataWarning
from lpdask.export import export

from .reference import assert_exact, smooth_image, whole_image_any
from .test_channels import image_with

GEOKEYS = (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633)  # projected, PixelIsArea, UTM 33N


def geotiff(path, pixels: np.ndarray, pixel_is_point: bool = False) -> None:
    """(bands, y, x) pixels as a tiled GeoTIFF: 10 m pixels, origin (500000, 4600000), nodata 0."""
    keys = list(GEOKEYS)
    keys[11] = 2 if pixel_is_point else 1
    tifffile.imwrite(path, pixels, planarconfig="separate", photometric="minisblack", tile=(16, 16), extratags=[
        (33550, "d", 3, (10.0, 10.0, 0.0), True), (33922, "d", 6, (0, 0, 0, 500000.0, 4600000.0, 0), True),
        (34735, "H", len(keys), tuple(keys), True), (42113, "s", 0, "0", True)])


@pytest.fixture
def microscopy(tmp_path):
    """A 3-channel 16-bit OME-TIFF, 0.5 µm pixels, 2 µm z-steps, named and coloured channels."""
    image = np.stack([np.moveaxis(image_with(3, 36, 72, seed=20 + z, dtype=np.uint16), -1, 0) for z in range(2)])
    tifffile.imwrite(tmp_path / "cells.ome.tif", image, metadata={
        "axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.5,
        "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "µm",
        "Channel": {"Name": ["DAPI", "GFP", "mCherry"]}})
    return tmp_path / "cells.ome.tif", image


def test_ome_tiff_to_ome_zarr(small_net, tmp_path, microscopy):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path, image = microscopy
    upscale(path, tmp_path / "out.zarr", model=small_net, chunk=16)
    group = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    multiscale = Image.from_zarr(group).attributes.ome.multiscales[0]  # raises unless valid NGFF 0.5
    assert [(a.name, a.unit) for a in multiscale.axes] == [
        ("c", None), ("z", "micrometer"), ("y", "micrometer"), ("x", "micrometer")]
    assert multiscale.datasets[0].coordinateTransformations[0].scale == [1.0, 2.0, 0.125, 0.125]
    for k in range(len(multiscale.datasets)):
        assert group[str(k)].metadata.dimension_names == ("c", "z", "y", "x")
    node = Reader(parse_url(str(tmp_path / "out.zarr")))()
    first = next(iter(node))
    assert first.metadata["channel_names"] == ["DAPI", "GFP", "mCherry"]
    out = group["0"]
    for z in range(2):
        assert_exact(out[:, z], whole_image_any(small_net, np.moveaxis(image[z], 0, -1), "separate"))


def test_ome_tiff_to_pyramidal_ome_tiff(small_net, tmp_path, microscopy):
    path, image = microscopy
    upscale(path, tmp_path / "out.ome.tif", model=small_net, chunk=16)
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        assert tif.is_bigtiff and tif.is_ome and tif.pages[0].is_tiled and tif.pages[0].subifds
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        series = tif.series[0]
        assert series.axes == "CZYX" and series.shape == (3, 2, 144, 288)  # OME-NGFF's axis order
        full = series.asarray()
        assert [level.shape for level in series.levels] == [(3, 2, 144, 288), (3, 2, 72, 144)]
    assert (pixels["PhysicalSizeX"], pixels["PhysicalSizeXUnit"]) == (0.125, "µm")
    assert (pixels["PhysicalSizeZ"], pixels["SizeC"], pixels["SizeZ"]) == (2.0, 3, 2)
    assert [c["Name"] for c in pixels["Channel"]] == ["DAPI", "GFP", "mCherry"]
    for z in range(2):
        assert_exact(full[:, z], whole_image_any(small_net, np.moveaxis(image[z], 0, -1), "separate"))


@pytest.mark.parametrize("pixel_is_point", [False, True])
def test_geotiff_to_geotiff(small_net, tmp_path, pixel_is_point):
    """GDAL reads the upscaled GeoTIFF with 2.5 m pixels at the same place, same CRS and nodata.
    For PixelIsPoint the tie point moves to where the first input pixel's centre now falls."""
    import rasterio

    bands = np.moveaxis(image_with(4, 40, 72, seed=9, dtype=np.uint16), -1, 0)
    geotiff(tmp_path / "in.tif", bands, pixel_is_point)
    upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_net, chunk=16)
    with rasterio.open(tmp_path / "in.tif") as before, rasterio.open(tmp_path / "out.tif") as after:
        assert after.crs == before.crs and after.crs.to_epsg() == 32633
        assert after.count == 4 and after.nodata == 0 and after.shape == (160, 288)
        assert after.overviews(1)  # a pyramid GDAL sees
        assert after.transform.a == pytest.approx(2.5) and after.transform.e == pytest.approx(-2.5)
        # the image's corners stay where they were on the ground
        assert after.bounds == pytest.approx(before.bounds)
        result = after.read()
    assert_exact(result, whole_image_any(small_net, np.moveaxis(bands, 0, -1), "separate"))


def test_geotiff_to_zarr_warns_and_export_restores_it(small_net, tmp_path):
    import rasterio

    geotiff(tmp_path / "in.tif", np.moveaxis(image_with(2, 30, 30, seed=10, dtype=np.uint16), -1, 0))
    with pytest.warns(MetadataWarning, match="GeoTIFF georeferencing has no OME-Zarr equivalent"):
        upscale(tmp_path / "in.tif", tmp_path / "out.zarr", model=small_net, chunk=16)
    export(tmp_path / "out.zarr", tmp_path / "exported.tif")
    with rasterio.open(tmp_path / "exported.tif") as exported:
        assert exported.crs.to_epsg() == 32633 and exported.nodata == 0
        assert exported.transform.a == pytest.approx(2.5) and exported.transform.c == pytest.approx(500000)
        assert np.array_equal(exported.read(), zarr.open_array(str(tmp_path / "out.zarr" / "0"))[:])


def test_rgb_tiff_output_and_nothing_dropped_silently(small_net, tmp_path):
    image = smooth_image(30, 34, seed=12)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb", iccprofile=b"\0" * 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_net, chunk=16)
    messages = [str(w.message) for w in caught if issubclass(w.category, MetadataWarning)]
    assert any("ICC" in m for m in messages), messages
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.is_tiled
        result = page.asarray()
    assert_exact(np.moveaxis(result, -1, 0), whole_image_any(small_net, image))


def test_jpeg_tiff_output(small_net, tmp_path):
    """--compression jpeg for 8-bit slides: much smaller, pixels close (JPEG is lossy)."""
    image = smooth_image(40, 72, seed=13)
    tifffile.imwrite(tmp_path / "in.tif", image, photometric="rgb")
    upscale(tmp_path / "in.tif", tmp_path / "zlib.tif", model=small_net, chunk=16)
    upscale(tmp_path / "in.tif", tmp_path / "jpeg.tif", model=small_net, chunk=16, compression="jpeg")
    with tifffile.TiffFile(tmp_path / "jpeg.tif") as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        jpeg = tif.pages[0].asarray().astype(int)
    assert (tmp_path / "jpeg.tif").stat().st_size < (tmp_path / "zlib.tif").stat().st_size / 2
    assert np.abs(jpeg - tifffile.imread(tmp_path / "zlib.tif").astype(int)).mean() < 4


def test_failed_tiff_output_leaves_no_tiff_and_resumes(small_net, tmp_path, monkeypatch):
    """A TIFF gets its name only once complete; after a failure in the TIFF writer, the same call
    again resumes from the stored result without recomputing a chunk."""
    import lpdask.io.tiff

    tifffile.imwrite(tmp_path / "in.tif", smooth_image(20, 20))
    real = lpdask.io.tiff.write_tiff

    def broken(path, *args, **kwargs):
        open(path, "wb").write(b"II*\0half a file")
        raise OSError("disk full")

    monkeypatch.setattr(lpdask.io.tiff, "write_tiff", broken)
    with pytest.raises(OSError, match="disk full"):
        upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_net, chunk=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif.work"]
    monkeypatch.setattr(lpdask.io.tiff, "write_tiff", real)
    summary = upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_net, chunk=16)
    assert summary.resumed and summary.computed_chunks == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif", "out.tif"]
    assert upscale(tmp_path / "in.tif", tmp_path / "out.tif", model=small_net, chunk=16).already_complete
