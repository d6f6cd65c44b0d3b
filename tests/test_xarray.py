"""xarray in, xarray out: ``upscale_array`` on a DataArray gives the whole-image values (tolerance in
reference.py) with the input's dims, coordinates at the new pixel centres, attrs, name, nodata and,
through rioxarray, CRS and transform at pixels 4 times smaller."""

from __future__ import annotations

import sys

import dask.array as da
import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr

from lpdask import LpdaskError, upscale_array
from lpdask.errors import MetadataWarning

from .reference import assert_exact, smooth_image, whole_image, whole_image_any

SCALE = 4
HEIGHT, WIDTH = 20, 24
WEST, NORTH, STEP = 500000.0, 5000000.0, 10.0
"""A north-up 10 m grid: x ascends from the west edge, y descends from the north edge, as in a GeoTIFF."""


def grid_array(image: np.ndarray, dims: tuple[str, ...] = ("band", "y", "x")) -> xr.DataArray:
    """(h, w, c) pixels as a numpy-backed DataArray with pixel-centre coordinates on the grid, in ``dims`` order."""
    height, width, bands = image.shape
    band = next(d for d in dims if d not in ("y", "x"))
    array = xr.DataArray(
        image, dims=("y", "x", band), name="reflectance", attrs={"sensor": "test", "platform": "S2B"},
        coords={"y": ("y", NORTH - STEP * (np.arange(height) + 0.5), {"units": "m"}),
                "x": ("x", WEST + STEP * (np.arange(width) + 0.5), {"units": "m"}),
                band: [f"b{i}" for i in range(bands)], "wavelength": (band, [490.0, 560.0, 665.0][:bands]),
                "time": np.datetime64("2024-06-01")})
    return array.transpose(*dims)


def test_values_equal_whole_image_and_stay_lazy(small_net):
    image = smooth_image(HEIGHT, WIDTH, seed=3)
    result = upscale_array(grid_array(image), small_net, chunk=16)
    assert isinstance(result, xr.DataArray) and isinstance(result.data, da.Array)
    assert result.dims == ("band", "y", "x") and result.shape == (3, HEIGHT * SCALE, WIDTH * SCALE)
    assert_exact(result.values, whole_image(small_net, image))


def test_coordinates_at_new_pixel_centres(small_net):
    source = grid_array(smooth_image(HEIGHT, WIDTH, seed=3)).assign_coords(lat=(("y", "x"), np.zeros((HEIGHT, WIDTH))))
    with pytest.warns(MetadataWarning, match="lat dropped"):
        result = upscale_array(source, small_net, chunk=16)
    small = STEP / SCALE  # output pixel j spans [edge + j * small, edge + (j + 1) * small]
    np.testing.assert_allclose(result.x.values, WEST + small * (np.arange(WIDTH * SCALE) + 0.5), rtol=1e-13, atol=0)
    np.testing.assert_allclose(result.y.values, NORTH - small * (np.arange(HEIGHT * SCALE) + 0.5), rtol=1e-13, atol=0)
    assert result.x.values[:2].tolist() == [500001.25, 500003.75] and result.y.values[-1] == 4999800.0 + 1.25
    assert result.x.attrs == {"units": "m"} and result.y.attrs == {"units": "m"}
    assert result.band.values.tolist() == ["b0", "b1", "b2"]
    assert result.wavelength.values.tolist() == [490.0, 560.0, 665.0] and result.wavelength.dims == ("band",)
    assert result.time.values == np.datetime64("2024-06-01") and "lat" not in result.coords
    assert result.name == "reflectance" and result.attrs == {"sensor": "test", "platform": "S2B"}


def test_input_without_coordinates_gives_output_without(small_net):
    source = xr.DataArray(da.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8, chunks=8), dims=("y", "x", "c"))
    result = upscale_array(source, small_net, chunk=16)
    assert result.dims == ("y", "x", "c") and result.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
    assert dict(result.coords) == {} and isinstance(result.data, da.Array)


@pytest.mark.parametrize("dims", [("band", "y", "x"), ("y", "x", "band"), ("x", "channel", "y"), ("y", "x")])
def test_dim_orders(small_net, dims):
    image = smooth_image(HEIGHT, WIDTH, seed=5)
    if len(dims) == 2:
        image = image[..., :1]
        expected = whole_image_any(small_net, image)[0]  # grey
        source = grid_array(image, ("y", "x", "band")).isel(band=0, drop=True)
    else:
        source = grid_array(image, dims)
        expected = whole_image(small_net, image)  # (band, y, x)
        expected = expected.transpose([("band", "y", "x").index(d if d in ("y", "x") else "band") for d in dims])
    result = upscale_array(source, small_net, chunk=16)
    assert result.dims == dims
    assert_exact(result.values, expected)
    np.testing.assert_allclose(result.x.values[[0, -1]], [WEST + 1.25, WEST + STEP * WIDTH - 1.25], rtol=1e-13)


def test_rioxarray_geotiff_keeps_crs_transform_nodata_and_attrs(small_net, small_checkpoint, tmp_path):
    from rasterio.transform import Affine, from_origin

    image = smooth_image(HEIGHT, WIDTH, seed=7)
    image[0, 0] = 0  # a nodata pixel
    path = tmp_path / "field.tif"
    with rasterio.open(path, "w", driver="GTiff", height=HEIGHT, width=WIDTH, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(WEST, NORTH, STEP, STEP), nodata=0) as ds:
        ds.write(np.moveaxis(image, -1, 0))
        ds.update_tags(MISSION="test-mission")
    source = rioxarray.open_rasterio(path)  # (band, y, x), not dask-backed
    assert source.chunks is None
    result = upscale_array(source, str(small_checkpoint), chunk=16)
    assert result.dims == ("band", "y", "x") and isinstance(result.data, da.Array)
    assert result.rio.crs.to_epsg() == 32633
    assert result.rio.transform().almost_equals(Affine(STEP / SCALE, 0, WEST, 0, -STEP / SCALE, NORTH), 1e-9)
    assert result.rio.nodata == 0 and result.attrs["MISSION"] == "test-mission"
    assert {k: v for k, v in result.attrs.items() if k != "_FillValue"} == \
        {k: v for k, v in source.attrs.items() if k != "_FillValue"}
    assert result.band.values.tolist() == [1, 2, 3]

    result.rio.to_raster(tmp_path / "field_sr.tif")
    with rasterio.open(tmp_path / "field_sr.tif") as out:
        assert out.crs.to_epsg() == 32633 and out.nodata == 0
        assert out.transform.almost_equals(Affine(2.5, 0, WEST, 0, -2.5, NORTH), 1e-9)
        assert_exact(out.read(), whole_image(small_net, image))

    masked = upscale_array(rioxarray.open_rasterio(path, masked=True), small_net, chunk=16, value_range=(0.0, 255.0))
    assert masked.encoding["_FillValue"] == 0 and masked.rio.encoded_nodata == 0


def test_geotransform_rescaled_without_rioxarray(small_net, monkeypatch):
    gdal = f"{WEST} {STEP} 0.0 {NORTH} 0.0 {-STEP}"
    source = grid_array(smooth_image(HEIGHT, WIDTH)).assign_coords(spatial_ref=((), 0, {"GeoTransform": gdal}))
    monkeypatch.setitem(sys.modules, "rioxarray", None)  # import rioxarray now fails
    result = upscale_array(source, small_net, chunk=16)
    assert [float(v) for v in result.spatial_ref.attrs["GeoTransform"].split()] == [WEST, 2.5, 0, NORTH, 0, -2.5]
    assert source.spatial_ref.attrs["GeoTransform"] == gdal


@pytest.mark.parametrize(("dims", "message"), [
    (("time", "band", "y", "x"), r"DataArray dims \(time, band, y, x\): time not supported"),
    (("band", "row", "col"), r"lack a y and an x dim"),
    (("c", "band", "y", "x"), r"more than one band dim: c, band"),
])
def test_bad_dims_one_line_error(small_net, dims, message):
    source = xr.DataArray(np.zeros((2,) * (len(dims) - 2) + (HEIGHT, WIDTH), np.uint8), dims=dims)
    with pytest.raises(LpdaskError, match=message) as error:
        upscale_array(source, small_net, chunk=16)
    assert "\n" not in str(error.value)


def test_uneven_coordinates_one_line_error(small_net):
    source = grid_array(smooth_image(HEIGHT, WIDTH))
    x = source.x.values.copy()
    x[5] += 0.5  # one pixel centre off the 10 m grid
    source = source.assign_coords(x=x)
    with pytest.raises(LpdaskError, match=r"x coordinates are not evenly spaced.*drop_vars\('x'\)") as error:
        upscale_array(source, small_net, chunk=16)
    assert "\n" not in str(error.value)


def test_dask_array_does_not_import_xarray(small_net, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # any import of xarray now fails, as if not installed
    result = upscale_array(da.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8, chunks=8), small_net, chunk=16)
    assert isinstance(result, da.Array) and result.shape == (HEIGHT * SCALE, WIDTH * SCALE, 3)
